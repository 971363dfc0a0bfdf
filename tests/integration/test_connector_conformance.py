"""The contract every connector must keep, run against each real broker.

A new connector joins by adding a harness (tests/support/harness.py) to ``HARNESSES``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from uuid import uuid4

import pytest

from relay.config import RelayConfig
from relay.connector import Connector, load_connector
from relay.model import OutboxMessage, OutcomeKind
from tests.support.harness import BrokerHarness
from tests.support.kafka_harness import KafkaHarness
from tests.support.rabbitmq_harness import RabbitMQHarness

pytestmark = pytest.mark.integration
HARNESSES = ["kafka", "rabbitmq"]
GRACE = 3.0


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest, unique_name) -> Iterator[BrokerHarness]:
    if request.param == "kafka":
        broker = request.getfixturevalue("private_tansu")
        made: KafkaHarness | RabbitMQHarness = KafkaHarness(broker.bootstrap, broker)
    else:
        node = request.getfixturevalue("private_rabbitmq")
        made = RabbitMQHarness(node.url, unique_name("outbox_ex"), node)
    yield made
    made.cleanup()


def connector_for(harness: BrokerHarness, **settings) -> Connector:
    base = RelayConfig(dsn="unused", connector=harness.connector_name, **settings)
    return load_connector(harness.configure(base))


def message(topic: str, key: str | None, payload: bytes, **headers: str) -> OutboxMessage:
    return OutboxMessage(id=uuid4(), topic=topic, key=key, payload=payload, headers=headers)


def publish(connector: Connector, batch, timeout: float = 5.0):
    async def go():
        await connector.open()
        try:
            started = time.monotonic()
            outcomes = await connector.publish(batch, timeout=timeout)
            return outcomes, time.monotonic() - started
        finally:
            await connector.close(timeout=2)

    return asyncio.run(go())


def test_a_batch_arrives_with_ids_keys_payloads_and_headers(harness):
    topic = harness.new_topic()
    batch = [
        message(topic, "order-1", b'{"total":10}', traceparent="00-abc-01"),
        message(topic, None, b"\x00\x01\xfe\xff"),
        message(topic, "order-2", "é".encode()),
    ]
    outcomes, _ = publish(connector_for(harness), batch)
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 3
    received = harness.read(topic, 3, timeout=15)
    assert [r.message_id for r in received] == [str(m.id) for m in batch]
    assert [r.key for r in received] == ["order-1", None, "order-2"]
    assert [r.value for r in received] == [m.payload for m in batch]
    assert received[0].headers["traceparent"] == "00-abc-01"


def test_one_key_keeps_its_order_over_a_large_batch(harness):
    topic = harness.new_topic()
    batch = [message(topic, "same", str(i).encode()) for i in range(1000)]
    outcomes, _ = publish(connector_for(harness), batch, timeout=20)
    assert all(o.delivered for o in outcomes)
    received = harness.read(topic, 1000, timeout=30)
    assert [r.value for r in received] == [m.payload for m in batch]


def test_batches_published_at_once_each_get_their_own_outcomes(harness):
    """The relay's claim lanes publish several batches at once through one connector."""
    topic, refused = harness.new_topic(), harness.unroutable_topic()
    batches = [
        [message(topic, f"lane-{lane}", f"{lane}:{i}".encode()) for i in range(300)]
        for lane in range(3)
    ]
    if refused is not None:
        batches[1][150] = message(refused, "lane-1", b"refused")

    async def go():
        connector = connector_for(harness)
        await connector.open()
        try:
            return await asyncio.gather(*(connector.publish(b, timeout=15) for b in batches))
        finally:
            await connector.close(timeout=2)

    outcomes = asyncio.run(go())
    for lane, batch_outcomes in enumerate(outcomes):
        refused_here = {150} if refused is not None and lane == 1 else set()
        assert len(batch_outcomes) == 300
        assert {i for i, o in enumerate(batch_outcomes) if not o.delivered} == refused_here
    received = harness.read(topic, 900 - (refused is not None), timeout=30)
    for lane, batch in enumerate(batches):
        sent = [m.payload for m in batch if m.topic == topic]
        assert [r.value for r in received if r.key == f"lane-{lane}"] == sent


def test_a_refused_message_is_permanent_and_alone(harness):
    refused = harness.unroutable_topic()
    if refused is None:
        pytest.skip(f"{harness.connector_name}: this broker has no reliably refused topic")
    topic = harness.new_topic()
    batch = [message(topic, "a", b"1"), message(refused, "b", b"2"), message(topic, "c", b"3")]
    outcomes, _ = publish(connector_for(harness), batch)
    assert [o.kind for o in outcomes] == [
        OutcomeKind.DELIVERED,
        OutcomeKind.PERMANENT,
        OutcomeKind.DELIVERED,
    ]
    assert outcomes[1].error
    assert len(harness.read(topic, 2, timeout=15)) == 2


def test_a_broker_outage_gives_retryable_outcomes_in_time_and_then_recovers(harness):
    topic = harness.new_topic()
    connector = connector_for(harness, publish_timeout=2.0)
    batch = [message(topic, "k", b"before")]

    async def scenario():
        await connector.open()
        try:
            assert (await connector.publish(batch, timeout=2.0))[0].delivered
            await asyncio.to_thread(harness.stop_broker)
            started = time.monotonic()
            down = await connector.publish([message(topic, "k", b"lost")] * 3, timeout=2.0)
            took = time.monotonic() - started
            await asyncio.to_thread(harness.start_broker)
            topic_again = await asyncio.to_thread(harness.new_topic)  # memory brokers forget
            return down, took, await publish_until_delivered(connector, topic_again)
        finally:
            await connector.close(timeout=2)

    down, took, recovered_after = asyncio.run(scenario())
    assert [o.kind for o in down] == [OutcomeKind.RETRYABLE] * 3
    assert took < 2.0 + GRACE
    assert recovered_after < 60


def test_a_frozen_broker_gives_retryable_outcomes_by_the_timeout(harness):
    topic = harness.new_topic()
    connector = connector_for(harness, publish_timeout=2.0)

    async def scenario():
        await connector.open()
        try:
            assert (await connector.publish([message(topic, "k", b"x")], timeout=2.0))[0].delivered
            await asyncio.to_thread(harness.pause_broker)
            try:
                started = time.monotonic()
                frozen = await connector.publish([message(topic, "k", b"y")], timeout=2.0)
                took = time.monotonic() - started
            finally:
                await asyncio.to_thread(harness.resume_broker)
            return frozen, took, await publish_until_delivered(connector, topic)
        finally:
            await connector.close(timeout=2)

    frozen, took, recovered_after = asyncio.run(scenario())
    assert [o.kind for o in frozen] == [OutcomeKind.RETRYABLE]
    assert took < 2.0 + GRACE
    assert recovered_after < 60


async def publish_until_delivered(connector: Connector, topic: str) -> float:
    """Keep publishing one message, as the relay would, until it is confirmed."""
    started = time.monotonic()
    while time.monotonic() - started < 60:
        outcome = (await connector.publish([message(topic, "k", b"after")], timeout=2.0))[0]
        if outcome.delivered:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return float("inf")


def test_close_is_harmless_before_open_and_twice(harness):
    connector = connector_for(harness)

    async def scenario():
        await connector.close(timeout=1)
        await connector.open()
        await connector.close(timeout=1)
        await connector.close(timeout=1)

    asyncio.run(scenario())
