"""W3C trace context: a ``traceparent`` (and ``tracestate``) given at enqueue time reaches
the consumer unchanged, as a Kafka record header and as an AMQP header."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from relay import enqueue
from relay.connector import load_connector
from relay.tracing import setup as tracing_setup
from tests.support.kafka_harness import KafkaHarness
from tests.support.rabbitmq_harness import RabbitMQHarness, unique_exchange
from tests.support.relays import RunningRelay, eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def relay_through(harness, db_dsn: str, topic: str):
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        enqueue(
            conn,
            topic=topic,
            key="order-1",
            payload={"n": 1},
            headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
        )
    config = harness.configure(relay_config(db_dsn))

    async def scenario():
        async with RunningRelay(config, load_connector(config)) as relay:
            await eventually(lambda: relay.service.source.stats.published >= 1, 20, "the send")

    asyncio.run(scenario())
    return harness.read(topic, 1, timeout=20)


def test_traceparent_travels_as_a_kafka_header(db_dsn, kafka_bootstrap):
    harness = KafkaHarness(kafka_bootstrap)
    try:
        received = relay_through(harness, db_dsn, harness.new_topic())
    finally:
        harness.cleanup()
    assert received[0].headers["traceparent"] == TRACEPARENT
    assert received[0].headers["tracestate"] == TRACESTATE


def test_traceparent_travels_as_an_amqp_header(db_dsn, amqp_url):
    harness = RabbitMQHarness(amqp_url, unique_exchange())
    try:
        received = relay_through(harness, db_dsn, harness.new_topic())
    finally:
        harness.cleanup()
    assert received[0].headers["traceparent"] == TRACEPARENT
    assert received[0].headers["tracestate"] == TRACESTATE


def test_with_opentelemetry_the_relays_send_span_is_a_child_of_the_traceparent(
    db_dsn, kafka_bootstrap, monkeypatch
):
    """The [otel] extra through a real relay and Tansu: the SDK's in-memory exporter gets
    a send span whose parent is the enqueue-time traceparent, and the header still
    reaches the consumer unchanged."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # what asks the relay to trace
    monkeypatch.setattr(tracing_setup, "provider_from_environment", lambda environ: provider)
    harness = KafkaHarness(kafka_bootstrap)
    try:
        topic = harness.new_topic()
        received = relay_through(harness, db_dsn, topic)
    finally:
        harness.cleanup()
    assert received[0].headers["traceparent"] == TRACEPARENT
    spans = exporter.get_finished_spans()
    trace_id, span_id = (int(part, 16) for part in TRACEPARENT.split("-")[1:3])
    # Every try of the message is a child of its traceparent. A loaded machine can make
    # the first produce to a new topic overrun the publish timeout: that try's spans end
    # in an error and the message goes again, with spans of its own.
    tries = [s for s in spans if s.parent is not None]
    assert tries and all(
        (s.parent.trace_id, s.parent.span_id) == (trace_id, span_id) for s in tries
    )
    [message_span] = [s for s in tries if s.status.status_code is not StatusCode.ERROR]
    assert message_span.name == f"send {topic}"
    assert message_span.attributes["messaging.system"] == "kafka"
    assert message_span.attributes["messaging.destination.name"] == topic
    assert message_span.attributes["messaging.message.id"] == received[0].message_id
    [batch_span] = [
        s for s in spans if s.parent is None and s.status.status_code is not StatusCode.ERROR
    ]
    assert [link.context.span_id for link in batch_span.links] == [message_span.parent.span_id]
