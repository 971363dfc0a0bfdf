"""W3C trace context: a ``traceparent`` (and ``tracestate``) given at enqueue time reaches
the consumer unchanged, as a Kafka record header and as an AMQP header."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from relay import enqueue
from relay.connector import load_connector
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
