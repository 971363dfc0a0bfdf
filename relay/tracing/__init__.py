"""OpenTelemetry traces of what the relay publishes, when the ``[otel]`` extra is installed
and configured (docs/formats.md).

The relay only looks for OpenTelemetry when its standard environment variables ask for
traces (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), or when something else in the process (say
``opentelemetry-instrument``) already installed an SDK tracer provider. Otherwise nothing
of OpenTelemetry is imported and the connector is returned unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from relay.connector import Connector, connector_settings

if TYPE_CHECKING:
    from relay.config import RelayConfig

log = logging.getLogger(__name__)

TRACING_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (OTEL_SDK_DISABLED turns every one off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return any(environ.get(name, "").strip() for name in TRACING_VARIABLES)


def destination_of(config: RelayConfig) -> Callable[[str], str]:
    """``topic -> messaging.destination.name``: RabbitMQ's is ``{exchange}:{routing key}``
    in the semantic conventions, every other system's the topic."""
    if config.connector == "rabbitmq":
        exchange = getattr(connector_settings(config), "exchange", "")
        return lambda topic: f"{exchange}:{topic}"
    return lambda topic: topic


def traced(connector: Connector, config: RelayConfig) -> Connector:
    """``connector`` recording a span per batch and per message that carries a
    ``traceparent``, or ``connector`` itself when tracing is not asked for."""
    already = _installed_provider()
    if already is None and not tracing_requested(os.environ):
        return connector
    try:
        from relay.tracing.setup import provider_from_environment
        from relay.tracing.spans import TracingConnector
    except ImportError as exc:
        log.warning("OpenTelemetry tracing is configured (OTEL_*) but its SDK is not "
                    "installed (%s); install outbox-relay[otel]. Publishing goes on "
                    "without traces.", exc.name)
        return connector
    provider, owned = (already, False) if already is not None else (
        provider_from_environment(os.environ), True)
    if provider is None:
        return connector
    return TracingConnector(connector, provider, system=config.connector,
                            destination=destination_of(config), owns_provider=owned)


def _installed_provider() -> Any:
    """An SDK tracer provider someone already made global, without importing anything:
    if the SDK was never imported, there is none."""
    if "opentelemetry.sdk.trace" not in sys.modules:
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None
