"""The connector conformance suite: the contract every connector keeps, as pytest tests
that a connector author runs against their own connector and a real broker.

Subclass ``ConnectorConformance`` in a test module (its name must start with ``Test``)
and override the ``connector_harness`` fixture with an object that fulfils
``ConformanceHarness``::

    class TestMyConnector(ConnectorConformance):
        @pytest.fixture
        def connector_harness(self, tmp_path):
            harness = MyHarness(tmp_path)  # builds the connector, drives the broker
            yield harness
            harness.cleanup()

docs/connectors.md has a complete example. This is the only module of the package that
imports pytest (a test dependency of the connector author's, not of the relay), and it
drives brokers only through the harness, so it imports no broker client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from uuid import uuid4

import pytest

from relay.connector import Connector
from relay.decorators import PUBLISH_GRACE
from relay.model import OutboxMessage, Outcome, OutcomeKind

DELIVERED, RETRYABLE, PERMANENT = (
    OutcomeKind.DELIVERED,
    OutcomeKind.RETRYABLE,
    OutcomeKind.PERMANENT,
)
# A connector may overrun its publish timeout by this much before the relay abandons it.
GRACE = PUBLISH_GRACE
FROZEN_TIMEOUT = 2.0  # the publish timeout while the broker is frozen or down
RECOVERY = 60.0  # how long a connector may take to publish again once the broker is back
QUIET = 1.0  # how long to watch for a message that must not arrive


@dataclass(frozen=True)
class Received:
    """One message as a consumer saw it on the broker."""

    message_id: str | None
    topic: str
    key: str | None
    value: bytes | None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    # AMQP only: the ``timestamp`` property and whether delivery_mode was 2 (persistent).
    timestamp: int | None = None
    persistent: bool | None = None


class ConformanceHarness(Protocol):
    """What the suite needs from a connector author: their connector, and a broker it can
    read back from, freeze and stop. A method that cannot be offered calls
    ``pytest.skip()`` (or returns None where that is allowed), and its tests are skipped."""

    def connector(self, *, publish_timeout: float) -> Connector:
        """A new connector to the broker under test, not opened yet."""
        ...

    def new_topic(self) -> str:
        """A fresh topic, already readable with ``read()`` in the order the broker took
        the messages in (Kafka: created with one partition; RabbitMQ: one queue bound
        to the exchange with this routing key)."""
        ...

    def read(self, topic: str, count: int, timeout: float) -> list[Received]:
        """Read until ``count`` messages arrived on ``topic`` or ``timeout`` passed, and
        return what arrived in broker order; each read goes on where the last one
        stopped."""
        ...

    def refused_before_sending(self, topic: str, key: str) -> OutboxMessage | None:
        """A message to ``topic`` with ``key`` that the connector refuses for good before
        it leaves the relay (a field the protocol cannot carry, ...), or None if the
        connector refuses nothing itself."""
        ...

    def unroutable_topic(self) -> str | None:
        """A topic the broker refuses for good (a PERMANENT outcome), or None."""
        ...

    def stop_broker(self) -> None:
        """Make the broker unreachable (kill or stop it)."""
        ...

    def start_broker(self) -> None:
        """Bring the broker back after ``stop_broker()``, wait until it answers, and make
        the topics from ``new_topic()`` readable again."""
        ...

    def pause_broker(self) -> None:
        """Freeze the broker: connections stay open but nothing answers (SIGSTOP of its
        process, or a TCP proxy that stops moving bytes)."""
        ...

    def resume_broker(self) -> None:
        """Undo ``pause_broker()``."""
        ...


def message(topic: str, key: str | None, payload: bytes, **headers: str) -> OutboxMessage:
    return OutboxMessage(id=uuid4(), topic=topic, key=key, payload=payload, headers=headers)


def kinds(outcomes: Sequence[Outcome]) -> list[OutcomeKind]:
    return [o.kind for o in outcomes]


def publish_once(
    connector: Connector, batch: Sequence[OutboxMessage], timeout: float = 5.0
) -> list[Outcome]:
    """Open ``connector``, publish one batch, close it; the outcomes."""

    async def go() -> list[Outcome]:
        await connector.open()
        try:
            return await connector.publish(batch, timeout=timeout)
        finally:
            await connector.close(timeout=2)

    return asyncio.run(go())


async def publish_until_delivered(connector: Connector, topic: str) -> float:
    """Keep publishing one message, as the relay would, until it is confirmed; the
    seconds it took (infinite if it never was)."""
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY:
        batch = [message(topic, "k", b"after")]
        if (await connector.publish(batch, timeout=FROZEN_TIMEOUT))[0].delivered:
            return time.monotonic() - started
        await asyncio.sleep(0.5)  # the relay's circuit breaker waits between probes too
    return float("inf")


class ConnectorConformance:
    """The tests every connector passes. Subclass it as ``Test...`` and override the
    ``connector_harness`` fixture (see the module's docstring)."""

    @pytest.fixture
    def connector_harness(self) -> ConformanceHarness:
        pytest.fail("override the connector_harness fixture in your ConnectorConformance class")

    def test_a_batch_arrives_with_ids_keys_payloads_and_headers(
        self, connector_harness: ConformanceHarness
    ) -> None:
        harness = connector_harness
        topic = harness.new_topic()
        batch = [
            message(topic, "order-1", b'{"total":10}', traceparent="00-abc-01"),
            message(topic, None, b"\x00\x01\xfe\xff"),
            message(topic, "order-2", "é".encode()),
        ]
        assert kinds(publish_once(harness.connector(publish_timeout=5.0), batch)) == [DELIVERED] * 3
        received = harness.read(topic, 3, timeout=15)
        assert [r.message_id for r in received] == [str(m.id) for m in batch]
        assert [r.key for r in received] == ["order-1", None, "order-2"]
        assert [r.value for r in received] == [m.payload for m in batch]
        assert received[0].headers["traceparent"] == "00-abc-01"

    def test_one_outcome_per_message_in_batch_order(
        self, connector_harness: ConformanceHarness
    ) -> None:
        """Outcomes line up with the batch: each failure at its own message's place."""
        harness = connector_harness
        topic = harness.new_topic()
        batch = [message(topic, ("a", "b", None)[i % 3], b"%d" % i) for i in range(12)]
        expected = [DELIVERED] * 12
        unroutable = harness.unroutable_topic()
        if unroutable is not None:  # a key of its own: a broker's refusal may come late
            batch[4], expected[4] = message(unroutable, "u", b"nowhere"), PERMANENT
        refused = harness.refused_before_sending(topic, "r")
        if refused is not None:
            batch[8], expected[8] = refused, PERMANENT
        outcomes = publish_once(harness.connector(publish_timeout=5.0), batch)
        assert kinds(outcomes) == expected
        assert all(o.error for o in outcomes if not o.delivered)
        sent = [str(m.id) for m, kind in zip(batch, expected, strict=True) if kind is DELIVERED]
        assert [r.message_id for r in harness.read(topic, len(sent), 15)] == sent
        assert harness.read(topic, 1, QUIET) == []

    def test_a_message_refused_before_sending_holds_back_its_key_and_only_its_key(
        self, connector_harness: ConformanceHarness
    ) -> None:
        """Sent now, the key's later messages would overtake the refused one, which is
        retried or dead-lettered later: they wait (RETRYABLE); other keys go through."""
        harness = connector_harness
        topic = harness.new_topic()
        refused = harness.refused_before_sending(topic, "k")
        if refused is None:
            pytest.skip("this connector refuses no message before sending")
        batch = [
            message(topic, "k", b"k0"),
            refused,
            message(topic, "other", b"o0"),
            message(topic, "k", b"k2"),
            message(topic, None, b"n0"),
            message(topic, "k", b"k3"),
            message(topic, "other", b"o1"),
        ]
        outcomes = publish_once(harness.connector(publish_timeout=5.0), batch)
        assert kinds(outcomes) == [
            DELIVERED, PERMANENT, DELIVERED, RETRYABLE, DELIVERED, RETRYABLE, DELIVERED
        ]  # fmt: skip
        received = harness.read(topic, 4, 15)
        assert [r.message_id for r in received] == [str(batch[i].id) for i in (0, 2, 4, 6)]
        assert harness.read(topic, 1, QUIET) == []  # k2 and k3 were not sent

    def test_one_key_keeps_its_order_over_a_large_batch(
        self, connector_harness: ConformanceHarness
    ) -> None:
        harness = connector_harness
        topic = harness.new_topic()
        batch = [message(topic, "same", str(i).encode()) for i in range(1000)]
        connector = harness.connector(publish_timeout=20.0)
        assert all(o.delivered for o in publish_once(connector, batch, timeout=20))
        received = harness.read(topic, 1000, timeout=30)
        assert [r.value for r in received] == [m.payload for m in batch]

    def test_batches_published_at_once_each_get_their_own_outcomes(
        self, connector_harness: ConformanceHarness
    ) -> None:
        """The relay's claim lanes publish several batches at once through one connector."""
        harness = connector_harness
        topic, refused = harness.new_topic(), harness.unroutable_topic()
        batches = [
            [message(topic, f"lane-{lane}", f"{lane}:{i}".encode()) for i in range(300)]
            for lane in range(3)
        ]
        if refused is not None:
            batches[1][150] = message(refused, "lane-1-refused", b"refused")
        connector = harness.connector(publish_timeout=15.0)

        async def go() -> list[list[Outcome]]:
            await connector.open()
            try:
                return await asyncio.gather(*(connector.publish(b, timeout=15) for b in batches))
            finally:
                await connector.close(timeout=2)

        for lane, outcomes in enumerate(asyncio.run(go())):
            refused_here = {150} if refused is not None and lane == 1 else set()
            assert len(outcomes) == 300
            assert {i for i, o in enumerate(outcomes) if not o.delivered} == refused_here
        received = harness.read(topic, 900 - (refused is not None), timeout=30)
        for lane, batch in enumerate(batches):
            sent = [m.payload for m in batch if m.topic == topic]
            assert [r.value for r in received if r.key == f"lane-{lane}"] == sent

    def test_a_broker_outage_gives_retryable_outcomes_in_time_and_then_recovers(
        self, connector_harness: ConformanceHarness
    ) -> None:
        harness = connector_harness
        topic = harness.new_topic()
        connector = harness.connector(publish_timeout=FROZEN_TIMEOUT)

        async def scenario() -> tuple[list[Outcome], float, float]:
            await connector.open()
            try:
                before = await connector.publish([message(topic, "k", b"x")], timeout=2.0)
                assert kinds(before) == [DELIVERED]
                await asyncio.to_thread(harness.stop_broker)
                started = time.monotonic()
                batch = [message(topic, "k", b"lost") for _ in range(3)]
                down = await connector.publish(batch, timeout=FROZEN_TIMEOUT)
                took = time.monotonic() - started
                await asyncio.to_thread(harness.start_broker)
                return down, took, await publish_until_delivered(connector, topic)
            finally:
                await connector.close(timeout=2)

        down, took, recovered_after = asyncio.run(scenario())
        assert kinds(down) == [RETRYABLE] * 3
        assert took < FROZEN_TIMEOUT + GRACE
        assert recovered_after < RECOVERY

    def test_a_frozen_broker_gives_retryable_outcomes_by_the_timeout(
        self, connector_harness: ConformanceHarness
    ) -> None:
        harness = connector_harness
        topic = harness.new_topic()
        connector = harness.connector(publish_timeout=FROZEN_TIMEOUT)

        async def scenario() -> tuple[list[Outcome], float, float]:
            await connector.open()
            try:
                before = await connector.publish([message(topic, "k", b"x")], timeout=2.0)
                assert kinds(before) == [DELIVERED]
                await asyncio.to_thread(harness.pause_broker)
                try:
                    started = time.monotonic()
                    batch = [message(topic, "k", b"y"), message(topic, "j", b"z")]
                    frozen = await connector.publish(batch, timeout=FROZEN_TIMEOUT)
                    took = time.monotonic() - started
                finally:
                    await asyncio.to_thread(harness.resume_broker)
                return frozen, took, await publish_until_delivered(connector, topic)
            finally:
                await connector.close(timeout=2)

        frozen, took, recovered_after = asyncio.run(scenario())
        assert kinds(frozen) == [RETRYABLE] * 2
        assert took < FROZEN_TIMEOUT + GRACE
        assert recovered_after < RECOVERY

    def test_close_is_harmless_before_open_and_twice(
        self, connector_harness: ConformanceHarness
    ) -> None:
        connector = connector_harness.connector(publish_timeout=5.0)

        async def scenario() -> None:
            await connector.close(timeout=1)
            await connector.open()
            await connector.close(timeout=1)
            await connector.close(timeout=1)

        asyncio.run(scenario())
