"""A tracer provider built from OpenTelemetry's standard environment variables.

The SDK reads most of them itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
(the resource), ``OTEL_TRACES_SAMPLER`` (the sampler), ``OTEL_BSP_*`` (the batch span
processor) and ``OTEL_EXPORTER_OTLP_*`` (the OTLP exporter). Here the exporters named in
``OTEL_TRACES_EXPORTER`` (default ``otlp``) are found by their entry points; ``otlp``
means OTLP over ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``,
``http/protobuf`` by default as the OpenTelemetry specification says (the Python SDK's
own auto-configuration would pick gRPC, which the ``[otel]`` extra does not install).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

log = logging.getLogger(__name__)

SERVICE_NAME = "outbox-relay"
EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


def provider_from_environment(environ: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting to every configured exporter, or None (with a WARNING) when
    none of them can be loaded."""
    exporters = [e for e in (_exporter(name, environ) for name in _exporter_names(environ)) if e]
    if not exporters:
        return None
    provider = TracerProvider(resource=Resource.create(_default_resource(environ)))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing: OpenTelemetry spans go to %s",
             ", ".join(type(e).__name__ for e in exporters))
    return provider


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"
    return [name.strip().lower() for name in names.split(",") if name.strip()]


def _entry_point_name(name: str, environ: Mapping[str, str]) -> str:
    if name != "otlp":
        return name
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    return _OTLP_BY_PROTOCOL.get(protocol, f"otlp ({protocol})")


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    wanted = _entry_point_name(name, environ)
    found = {ep.name: ep for ep in entry_points(group=EXPORTER_GROUP)}
    if wanted not in found:
        log.warning("tracing: no span exporter %r is installed (installed: %s); "
                    "install outbox-relay[otel] or change OTEL_TRACES_EXPORTER",
                    wanted, ", ".join(sorted(found)) or "none")
        return None
    exporter: SpanExporter = found[wanted].load()()
    return exporter


def _default_resource(environ: Mapping[str, str]) -> dict[str, str]:
    """``service.name`` outbox-relay unless the environment names the service; the SDK
    merges these attributes over the environment's, so they are only given when absent."""
    named = environ.get("OTEL_SERVICE_NAME", "").strip() or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", "")
    return {} if named else {"service.name": SERVICE_NAME}
