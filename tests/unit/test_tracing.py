"""OpenTelemetry spans of a publish, recorded with the SDK's in-memory exporter; and the
relay importing nothing of OpenTelemetry unless the environment asks for traces."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from uuid import uuid4

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from relay.config import RelayConfig
from relay.model import OutboxMessage, permanent
from relay.tracing import destination_of, tracing_requested
from relay.tracing.setup import provider_from_environment
from relay.tracing.spans import TracingConnector
from tests.support.fakes import InMemoryConnector

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_PARENT = "b7ad6b7169203331"


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def tracing(inner, system="kafka", config=None):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    destination = destination_of(config or RelayConfig(dsn="x", connector=system))
    return TracingConnector(inner, provider, system=system, destination=destination,
                            owns_provider=True), exporter


def test_a_message_span_is_the_child_of_its_traceparent_and_the_batch_links_to_it():
    inner = InMemoryConnector(rules=[lambda m: permanent("refused") if m.key == "bad" else None])
    connector, exporter = tracing(inner)
    batch = [
        OutboxMessage(uuid4(), "orders", "k1", b"{}",
                      headers={"traceparent": traceparent(TRACE_ID, PARENT_ID)}),
        OutboxMessage(uuid4(), "orders", None, b"{}"),  # no context: in the batch span only
        OutboxMessage(uuid4(), "orders", "bad", None,
                      headers={"traceparent": traceparent(OTHER_TRACE, OTHER_PARENT)}),
    ]
    outcomes = asyncio.run(connector.publish(batch, timeout=1))
    assert [o.delivered for o in outcomes] == [True, True, False]
    spans = {(s.name, s.context.trace_id): s for s in exporter.get_finished_spans()}
    assert len(spans) == 3
    first = spans[("send orders", int(TRACE_ID, 16))]
    failed = spans[("send orders", int(OTHER_TRACE, 16))]
    [batch_span] = [s for s in spans.values() if s.parent is None]

    assert first.parent.span_id == int(PARENT_ID, 16) and first.parent.is_remote
    assert failed.parent.span_id == int(OTHER_PARENT, 16)
    assert first.kind is SpanKind.CLIENT and batch_span.kind is SpanKind.CLIENT
    assert dict(first.attributes) == {
        "messaging.system": "kafka", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": "orders",
        "messaging.message.id": str(batch[0].id), "messaging.kafka.message.key": "k1"}
    assert first.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "permanent"
    assert failed.attributes["messaging.kafka.message.tombstone"] is True
    assert [link.context.span_id for link in first.links] == [batch_span.context.span_id]

    assert batch_span.name == "send orders"
    assert batch_span.attributes["messaging.batch.message_count"] == 3
    assert [(link.context.span_id, link.attributes["messaging.message.id"])
            for link in batch_span.links] == [(int(PARENT_ID, 16), str(batch[0].id)),
                                              (int(OTHER_PARENT, 16), str(batch[2].id))]
    assert batch_span.status.status_code is StatusCode.ERROR
    assert "1 of 3 not delivered" in batch_span.status.description
    assert first.start_time == batch_span.start_time  # both from the hand-over


def test_rabbitmq_destinations_are_exchange_and_routing_key():
    config = RelayConfig(
        dsn="x", connector="rabbitmq", connector_options={"exchange": "events"}
    )
    connector, exporter = tracing(InMemoryConnector(), "rabbitmq", config)
    batch = [OutboxMessage(uuid4(), "a", "k", b"{}",
                           headers={"traceparent": traceparent(TRACE_ID, PARENT_ID)}),
             OutboxMessage(uuid4(), "b", "k", b"{}")]
    asyncio.run(connector.publish(batch, timeout=1))
    spans = exporter.get_finished_spans()
    [message] = [s for s in spans if s.parent is not None]
    [batch_span] = [s for s in spans if s.parent is None]
    assert message.name == "send events:a"
    assert message.attributes["messaging.rabbitmq.destination.routing_key"] == "a"
    assert batch_span.name == "send"  # two destinations: none named
    assert "messaging.destination.name" not in batch_span.attributes


def test_an_invalid_traceparent_makes_no_message_span():
    connector, exporter = tracing(InMemoryConnector())
    batch = [OutboxMessage(uuid4(), "t", "k", b"{}", headers={"traceparent": "garbage"})]
    asyncio.run(connector.publish(batch, timeout=1))
    [only] = exporter.get_finished_spans()
    assert only.parent is None and not only.links


def test_closing_flushes_and_shuts_down_the_provider_it_owns():
    connector, exporter = tracing(InMemoryConnector())
    asyncio.run(connector.close(timeout=1))
    assert exporter._stopped  # the SDK's own flag: shutdown reached the exporter


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, False),
    ],
)
def test_only_the_standard_variables_turn_tracing_on(environ, wanted):
    assert tracing_requested(environ) is wanted


def test_exporters_are_found_by_their_standard_names(caplog, monkeypatch):
    otlp = provider_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert otlp is not None  # otlp = OTLP over http/protobuf, the extra's exporter
    [processor] = otlp._active_span_processor._span_processors
    assert type(processor.span_exporter).__name__ == "OTLPSpanExporter"
    assert otlp.resource.attributes["service.name"] == "outbox-relay"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-relay")  # the SDK reads it itself
    named = provider_from_environment({"OTEL_TRACES_EXPORTER": "console",
                                       "OTEL_SERVICE_NAME": "billing-relay"})
    assert named is not None and named.resource.attributes["service.name"] == "billing-relay"
    with caplog.at_level(logging.WARNING, logger="outbox_relay.tracing"):
        assert provider_from_environment({"OTEL_TRACES_EXPORTER": "zipkin"}) is None
        assert provider_from_environment({"OTEL_TRACES_EXPORTER": "otlp",
                                          "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None
    assert "no span exporter 'zipkin'" in caplog.text and "otlp_proto_grpc" in caplog.text
    for provider in (otlp, named):
        provider.shutdown()


# A fresh interpreter, so that what is imported is what the relay imports.
NOTHING_IMPORTED = textwrap.dedent("""
    import sys
    from relay.cli.app import app
    from relay.config import RelayConfig
    from relay.tracing import traced
    from tests.support.fakes import InMemoryConnector

    inner = InMemoryConnector()
    assert traced(inner, RelayConfig(dsn="x", connector="memory")) is inner
    print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
""")
SDK_MISSING = textwrap.dedent("""
    import sys, logging
    class Missing:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "opentelemetry":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Missing())
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from relay.config import RelayConfig
    from relay.tracing import traced
    from tests.support.fakes import InMemoryConnector

    inner = InMemoryConnector()
    assert traced(inner, RelayConfig(dsn="x", connector="memory")) is inner
""")


def run_python(code: str, **environ: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, env={**clean, **environ})


def test_without_the_environment_nothing_of_opentelemetry_is_imported():
    done = run_python(NOTHING_IMPORTED)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_sdk_the_relay_says_so_once_and_publishes_untraced():
    done = run_python(SDK_MISSING, OTEL_TRACES_EXPORTER="console")
    assert done.returncode == 0, done.stderr
    assert "install outbox-relay[otel]" in done.stderr
    assert done.stderr.count("\n") == 1
