"""Payloads, keys and headers of any content travel uninterpreted, from the SQL functions
through a running relay to Kafka and RabbitMQ: every byte value, unicode of all kinds,
large headers and many of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import psycopg
import pytest

from relay.config import RelayConfig
from relay.connector import load_connector
from tests.support.harness import BrokerHarness
from tests.support.kafka_harness import KafkaHarness
from tests.support.rabbitmq_harness import RabbitMQHarness
from tests.support.relays import FAST, RunningRelay, eventually, install_outbox

pytestmark = pytest.mark.integration
ODD_TEXT = 'zero\u200bwidth, RTL \u05e9\u05dc\u05d5\u05dd, e\u0301, emoji \U0001f680, "q" \\ \t\n'
BIG_HEADER = "h" * 16_000 + "\u00e9"
MANY_HEADERS = {f"x-h{i}": f"v{i}-\u00fc" for i in range(100)}


@pytest.fixture(params=["kafka", "rabbitmq"])
def harness(request, unique_name) -> Iterator[BrokerHarness]:
    if request.param == "kafka":
        made: KafkaHarness | RabbitMQHarness = KafkaHarness(
            request.getfixturevalue("kafka_bootstrap")
        )
    else:
        made = RabbitMQHarness(request.getfixturevalue("amqp_url"), unique_name("outbox_ex"))
    yield made
    made.cleanup()


def test_odd_content_arrives_byte_for_byte(db_dsn, harness):
    install_outbox(db_dsn)
    topic = harness.new_topic()
    every_byte = bytes(range(256)) * 4
    json_payload = {
        "text": ODD_TEXT,
        "nested": {"list": [1, 2.5, None, True]},
        "pad": "p" * 100_000,
    }
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "SELECT outbox.enqueue_binary(%s, %s, %s, %s::jsonb, 'application/x-odd')",
            (topic, "k \u00e9\U0001f680", every_byte, orjson.dumps({"big": BIG_HEADER}).decode()),
        )
        conn.execute(
            "SELECT outbox.enqueue(%s, %s, %s::jsonb, %s::jsonb)",
            (
                topic,
                "k \u00e9\U0001f680",
                orjson.dumps(json_payload).decode(),
                orjson.dumps({**MANY_HEADERS, "odd": ODD_TEXT}).decode(),
            ),
        )
        conn.execute("SELECT outbox.enqueue_binary(%s, NULL, ''::bytea)", (topic,))
    config = harness.configure(RelayConfig(dsn=db_dsn, **FAST))

    async def relay() -> None:
        async with RunningRelay(config, connector=load_connector(config)) as running:
            await eventually(lambda: running.service.source.stats.published >= 3, 30, "3 sent")

    asyncio.run(relay())
    received = harness.read(topic, 3, timeout=30)
    # The two keyed messages keep their order; the keyless one may come out of another lane.
    binary, text = [r for r in received if r.key is not None]
    (empty,) = [r for r in received if r.key is None]
    assert binary.value == every_byte
    assert binary.content_type in ("application/x-odd", None)  # Kafka: a header
    assert binary.headers["big"] == BIG_HEADER
    assert binary.key == text.key == "k \u00e9\U0001f680"
    assert orjson.loads(text.value) == json_payload
    assert {k: text.headers[k] for k in MANY_HEADERS} == MANY_HEADERS
    assert text.headers["odd"] == ODD_TEXT
    assert empty.value in (b"", None) and empty.key is None
