"""CDC mode end to end through the real connectors: outbox rows and emitted events reach
a Kafka-protocol broker and RabbitMQ in commit order, with ids, keys and headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from relay import enqueue
from relay.connector import load_connector
from tests.support.cdc_relays import RunningCdcRelay, cdc_config, eventually
from tests.support.harness import BrokerHarness
from tests.support.kafka_harness import KafkaHarness
from tests.support.rabbitmq_harness import RabbitMQHarness, unique_exchange
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration


@pytest.fixture(params=["kafka", "rabbitmq"])
def harness(request: pytest.FixtureRequest) -> Iterator[BrokerHarness]:
    if request.param == "kafka":
        made: KafkaHarness | RabbitMQHarness = KafkaHarness(
            request.getfixturevalue("kafka_bootstrap"))
    else:
        made = RabbitMQHarness(request.getfixturevalue("amqp_url"), unique_exchange())
    yield made
    made.cleanup()


def produce(dsn: str, topic: str) -> list[str]:
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(20):
            with conn.transaction():
                if n % 4 == 3:  # a table-less event in the same stream
                    row = conn.execute("SELECT outbox.emit(%s, %s, %s::jsonb, %s::jsonb)",
                                       (topic, f"k{n % 3}", f'{{"n": {n}}}',
                                        '{"source": "emit"}')).fetchone()
                    ids.append(str(row[0]))
                else:
                    ids.append(str(enqueue(conn, topic=topic, key=f"k{n % 3}",
                                           payload={"n": n}, headers={"source": "row"})))
    return ids


def test_rows_and_emitted_events_reach_the_broker_in_commit_order(db_dsn, harness):
    install_outbox(db_dsn)
    topic = harness.new_topic()
    config = harness.configure(cdc_config(db_dsn))  # sets the connector and its address
    connector = load_connector(config)

    async def scenario():
        async with RunningCdcRelay(config, connector) as running:
            await running.streaming()
            ids = await asyncio.to_thread(produce, db_dsn, topic)
            await eventually(lambda: running.relay.stats.published >= len(ids), 30,
                             "the broker's confirms")
        await connector.close(timeout=5)
        return ids

    ids = asyncio.run(scenario())
    received = harness.read(topic, len(ids), timeout=30)
    assert [r.message_id for r in received] == ids
    assert [r.key for r in received] == [f"k{n % 3}" for n in range(20)]
    # A row as relay.enqueue wrote it; an emit() of a jsonb value as jsonb prints it.
    assert received[0].value == b'{"n":0}' and received[3].value == b'{"n": 3}'
    assert [r.headers.get("source") for r in received[:4]] == ["row", "row", "row", "emit"]
    assert {r.content_type for r in received} == {"application/json"}
