"""Options of ``outbox-relay run`` for the drain itself: batch size, claim lanes, and
the timings of leases, polling, lingering, retention and shutdown.

Kept apart from relay/cli.py, like relay/cli/run_options.py; each option has its
``OUTBOX_RELAY_*`` environment variable, shown in ``--help``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relay import config as defaults
from relay.durations import parse_duration

BatchSizeOption = Annotated[
    int,
    typer.Option(
        "--batch-size",
        envvar="OUTBOX_RELAY_BATCH_SIZE",
        metavar="N",
        help="Messages claimed and published per batch.",
    ),
]

ClaimLanesOption = Annotated[
    int,
    typer.Option(
        "--claim-lanes",
        envvar="OUTBOX_RELAY_CLAIM_LANES",
        metavar="N",
        help="Batches in flight at once in polling mode during a backlog, each lane with "
        "its own share of the buckets (per-key order holds) and its own database "
        "connection; at light traffic one lane claims for all.",
    ),
]

PublishTimeoutOption = Annotated[
    str,
    typer.Option(
        "--publish-timeout",
        envvar="OUTBOX_RELAY_PUBLISH_TIMEOUT",
        metavar="DURATION",
        help="Wait this long for broker confirms of a batch.",
    ),
]

LeaseTtlOption = Annotated[
    str,
    typer.Option(
        "--lease-ttl",
        envvar="OUTBOX_RELAY_LEASE_TTL",
        metavar="DURATION",
        help="A dead relay's buckets move to others after this long.",
    ),
]

PollIntervalOption = Annotated[
    str,
    typer.Option(
        "--poll-interval",
        envvar="OUTBOX_RELAY_POLL_INTERVAL",
        metavar="DURATION",
        help="Fallback poll when no NOTIFY arrives.",
    ),
]

PollLingerOption = Annotated[
    str,
    typer.Option(
        "--poll-linger",
        envvar="OUTBOX_RELAY_POLL_LINGER",
        metavar="DURATION",
        help="After a NOTIFY, wait this long so the commits right behind share the batch "
        "(not after a long idle wait: a lone commit is claimed at once).",
    ),
]

RetentionOption = Annotated[
    str,
    typer.Option(
        "--retention",
        envvar="OUTBOX_RELAY_RETENTION",
        metavar="DURATION",
        help="0 deletes a message once the broker confirmed it; a duration keeps sent "
        "messages that long (an UPDATE per message instead, and a bigger table).",
    ),
]

ShutdownTimeoutOption = Annotated[
    str,
    typer.Option(
        "--shutdown-timeout",
        envvar="OUTBOX_RELAY_SHUTDOWN_TIMEOUT",
        metavar="DURATION",
        help="Bound on the drain after SIGTERM.",
    ),
]


def drain_settings(
    *,
    batch_size: int,
    claim_lanes: int,
    publish_timeout: str,
    lease_ttl: str,
    poll_interval: str,
    poll_linger: str,
    retention: str,
    shutdown_timeout: str,
) -> dict[str, Any]:
    """The RelayConfig fields these options set (validated with the rest by RelayConfig)."""
    return {
        "batch_size": batch_size,
        "claim_lanes": claim_lanes,
        "publish_timeout": parse_duration(publish_timeout, "publish timeout"),
        "lease_ttl": parse_duration(lease_ttl, "lease TTL"),
        "poll_interval": parse_duration(poll_interval, "poll interval"),
        "poll_linger": parse_duration(poll_linger, "poll linger"),
        "retention": parse_duration(retention, "retention"),
        "shutdown_timeout": parse_duration(shutdown_timeout, "shutdown timeout"),
    }


DEFAULT_PUBLISH_TIMEOUT = f"{defaults.DEFAULT_PUBLISH_TIMEOUT:g}s"
DEFAULT_LEASE_TTL = f"{defaults.DEFAULT_LEASE_TTL:g}s"
DEFAULT_POLL_INTERVAL = f"{defaults.DEFAULT_POLL_INTERVAL:g}s"
DEFAULT_POLL_LINGER = f"{defaults.DEFAULT_POLL_LINGER * 1000:g}ms"
DEFAULT_RETENTION = f"{defaults.DEFAULT_RETENTION:g}"
DEFAULT_SHUTDOWN_TIMEOUT = f"{defaults.DEFAULT_SHUTDOWN_TIMEOUT:g}s"
