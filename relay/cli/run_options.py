"""Options of ``outbox-relay run`` for failure handling and operability: retries,
attempts, the poison-message policy, metrics/health and the log format; and for the wire
format: the topic template and the CloudEvents envelope.

Kept apart from relay/cli.py so that command stays readable; each option has its
``OUTBOX_RELAY_*`` environment variable, shown in ``--help``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relay import config as defaults
from relay.durations import parse_duration
from relay.formats.settings import FormatSettings

RetryBaseOption = Annotated[
    str,
    typer.Option(
        "--retry-base",
        envvar="OUTBOX_RELAY_RETRY_BASE",
        metavar="DURATION",
        help="First retry delay; each retry may wait up to twice the last (full jitter).",
    ),
]
RetryCapOption = Annotated[
    str,
    typer.Option(
        "--retry-cap",
        envvar="OUTBOX_RELAY_RETRY_CAP",
        metavar="DURATION",
        help="Longest retry delay, also the longest circuit-breaker cooldown.",
    ),
]
MaxAttemptsOption = Annotated[
    int,
    typer.Option(
        "--max-attempts",
        envvar="OUTBOX_RELAY_MAX_ATTEMPTS",
        metavar="N",
        help="Failed deliveries before a message moves to the dead letters "
        "(broker outages do not count).",
    ),
]
OnPoisonOption = Annotated[
    str,
    typer.Option(
        "--on-poison",
        envvar="OUTBOX_RELAY_ON_POISON",
        metavar="block|skip",
        help="block: a dead letter's key waits until it is retried or dropped; "
        "skip: the key's later messages go on.",
    ),
]
MetricsHostOption = Annotated[
    str,
    typer.Option(
        "--metrics-host",
        envvar="OUTBOX_RELAY_METRICS_HOST",
        metavar="HOST",
        help="Address of /metrics, /healthz and /readyz (0.0.0.0 for every interface).",
    ),
]
MetricsPortOption = Annotated[
    int,
    typer.Option(
        "--metrics-port",
        envvar="OUTBOX_RELAY_METRICS_PORT",
        metavar="PORT",
        help="Port of /metrics, /healthz and /readyz; 0 turns them off.",
    ),
]
LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="OUTBOX_RELAY_LOG_FORMAT",
        metavar="text|json",
        help="text, or json: one object per line with stable field names.",
    ),
]


def operability_settings(
    *,
    retry_base: str,
    retry_cap: str,
    max_attempts: int,
    on_poison: str,
    metrics_host: str,
    metrics_port: int,
    log_format: str,
) -> dict[str, Any]:
    """The RelayConfig fields these options set (validated with the rest by RelayConfig)."""
    return {
        "retry_base": parse_duration(retry_base, "retry base delay"),
        "retry_cap": parse_duration(retry_cap, "retry cap"),
        "max_attempts": max_attempts,
        "on_poison": on_poison,
        "metrics_host": metrics_host,
        "metrics_port": metrics_port,
        "log_format": log_format,
    }


DEFAULT_RETRY_BASE = f"{defaults.DEFAULT_RETRY_BASE * 1000:g}ms"
DEFAULT_RETRY_CAP = f"{defaults.DEFAULT_RETRY_CAP:g}s"


# --- the wire format (relay.formats, docs/formats.md) ---------------------------------------

TopicTemplateOption = Annotated[
    str | None,
    typer.Option(
        "--topic-template",
        envvar="OUTBOX_RELAY_TOPIC_TEMPLATE",
        show_default=False,
        help="Publish to this topic, {topic} standing for the message's topic, e.g. "
        "'prod.{topic}' (default: the topic itself; with --cdc-debezium "
        "'outbox.event.{topic}', as Debezium's router).",
    ),
]
EnvelopeOption = Annotated[
    str,
    typer.Option(
        "--envelope",
        envvar="OUTBOX_RELAY_ENVELOPE",
        help="none, or cloudevents: each message as a CloudEvent in the broker's protocol "
        "binding (needs --cloudevents-source).",
    ),
]
CloudEventsSourceOption = Annotated[
    str | None,
    typer.Option(
        "--cloudevents-source",
        envvar="OUTBOX_RELAY_CLOUDEVENTS_SOURCE",
        show_default=False,
        help="With --envelope cloudevents: the events' source, a URI such as /billing.",
    ),
]
CloudEventsModeOption = Annotated[
    str | None,
    typer.Option(
        "--cloudevents-mode",
        envvar="OUTBOX_RELAY_CLOUDEVENTS_MODE",
        show_default=False,
        help="With --envelope cloudevents: binary (default; attributes in headers, the "
        "payload unchanged) or structured (the JSON event as the value).",
    ),
]


def format_settings(
    *,
    topic_template: str | None,
    envelope: str,
    cloudevents_source: str | None,
    cloudevents_mode: str | None,
) -> FormatSettings:
    """The wire-format settings (validated with the rest by RelayConfig)."""
    return FormatSettings(
        topic_template=topic_template,
        envelope=envelope,
        cloudevents_source=cloudevents_source,
        cloudevents_mode=cloudevents_mode,
    )
