"""The Kafka connector against a real Kafka-protocol broker (the session's broker from
tests/support/fixtures_services.py: Tansu as a local process unless the environment or
Docker provides one).

Each test uses its own topics; tests that stop or pause the broker get a Tansu of their
own (``private_tansu``). Nothing here relies on Tansu-only behaviour: topics are created
before use, and the restart test accepts every way a Kafka broker may come back (with or
without its state).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from connectors import kafka
from connectors.kafka import REPORT_GRACE, KafkaConnector, _ProducerSession
from relay.config import RelayConfig
from relay.errors import BrokerUnavailableError, ConfigError
from relay.model import OutboxMessage, Outcome, OutcomeKind
from tests.support.kafka_harness import KafkaHarness
from tests.support.services import TansuBroker, free_port

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
DELIVERED, RETRYABLE, PERMANENT = (
    OutcomeKind.DELIVERED,
    OutcomeKind.RETRYABLE,
    OutcomeKind.PERMANENT,
)


@pytest.fixture
def harness(kafka_bootstrap: str) -> Iterator[KafkaHarness]:
    harness = KafkaHarness(kafka_bootstrap)
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture
def private_harness(private_tansu: TansuBroker) -> KafkaHarness:
    return KafkaHarness(private_tansu.bootstrap, private_tansu)


def config_for(
    harness: KafkaHarness, kafka_options: dict[str, str] | None = None, **changes: Any
) -> RelayConfig:
    """The harness's config; ``kafka_options`` are librdkafka properties passed through."""
    config = dataclasses.replace(harness.configure(RelayConfig(dsn="postgresql://unused",
                                                               connect_timeout=5.0)), **changes)
    options = {**config.connector_options, **(kafka_options or {})}
    return dataclasses.replace(config, connector_options=options).validate()


@contextlib.asynccontextmanager
async def opened(config: RelayConfig) -> AsyncIterator[KafkaConnector]:
    connector = KafkaConnector.from_config(config)
    await connector.open()
    try:
        yield connector
    finally:
        await connector.close(timeout=TIMEOUT)


def message(topic: str, key: str | None, payload: bytes | None, **fields: Any) -> OutboxMessage:
    return OutboxMessage(uuid.uuid4(), topic, key, payload, **fields)


def kinds(outcomes: Sequence[Outcome]) -> list[OutcomeKind]:
    return [o.kind for o in outcomes]


def publish_once(config: RelayConfig, batch: Sequence[OutboxMessage]) -> list[Outcome]:
    async def scenario() -> list[Outcome]:
        async with opened(config) as connector:
            return await connector.publish(batch, timeout=TIMEOUT)

    return asyncio.run(scenario())


def test_batch_arrives_byte_for_byte(harness: KafkaHarness) -> None:
    topic, other = harness.new_topic(), harness.new_topic()
    batch = [
        message(topic, "order-1", b'{"n":1}', headers={"trace": "t1", "tenant": "ä"}),
        message(other, None, bytes(range(256)), content_type="application/octet-stream"),
        message(topic, "ключ-2", b'{"n":2}', headers={}),
    ]

    assert kinds(publish_once(config_for(harness), batch)) == [DELIVERED] * 3

    got = harness.read(topic, 2, TIMEOUT) + harness.read(other, 1, TIMEOUT)
    sent = [batch[0], batch[2], batch[1]]
    assert [r.message_id for r in got] == [str(m.id) for m in sent]
    assert [r.topic for r in got] == [topic, topic, other]
    assert [r.key for r in got] == [m.key for m in sent]
    assert [r.value for r in got] == [m.payload for m in sent]
    assert [r.headers for r in got] == [dict(m.headers) for m in sent]
    assert [r.content_type for r in got] == [m.content_type for m in sent]


def test_tombstone_has_a_null_value(harness: KafkaHarness) -> None:
    topic = harness.new_topic()
    batch = [message(topic, "order-1", b"{}"), message(topic, "order-1", None)]

    assert kinds(publish_once(config_for(harness), batch)) == [DELIVERED] * 2

    got = harness.read(topic, 2, TIMEOUT)
    assert [(r.key, r.value) for r in got] == [("order-1", b"{}"), ("order-1", None)]


def test_same_key_order_holds_across_a_batch_of_1000(harness: KafkaHarness) -> None:
    topic = harness.new_topic(partitions=4)
    batch = [message(topic, f"k{i % 7}", b'{"i":%d}' % i) for i in range(1000)]

    assert kinds(publish_once(config_for(harness), batch)) == [DELIVERED] * 1000

    got = harness.read(topic, 1000, TIMEOUT)
    assert len(got) == 1000
    for key in {m.key for m in batch}:
        sent_ids = [str(m.id) for m in batch if m.key == key]
        assert [r.message_id for r in got if r.key == key] == sent_ids


def test_message_over_max_bytes_alone_is_permanent(harness: KafkaHarness) -> None:
    topic = harness.new_topic()
    batch = [
        message(topic, "a", b"small"),
        message(topic, "a", b"x" * 1_100_000),  # librdkafka's message.max.bytes is 1,000,000
        message(topic, "b", b"small too"),
        message(topic, "a", b"behind the refused one"),
    ]

    outcomes = publish_once(config_for(harness), batch)

    # the key's later message is held back, so it cannot overtake the refused one
    assert kinds(outcomes) == [DELIVERED, PERMANENT, DELIVERED, RETRYABLE]
    assert "MSG_SIZE_TOO_LARGE" in (outcomes[1].error or "")
    assert [r.value for r in harness.read(topic, 2, TIMEOUT)] == [b"small", b"small too"]


def test_invalid_topic_is_permanent(harness: KafkaHarness) -> None:
    topic, invalid = harness.new_topic(), harness.unroutable_topic()
    assert invalid is not None
    batch = [message(topic, "a", b"1"), message(invalid, "a", b"2")]

    assert kinds(publish_once(config_for(harness), batch)) == [DELIVERED, PERMANENT]


def test_kafka_options_pass_through(
    harness: KafkaHarness, caplog: pytest.LogCaptureFixture
) -> None:
    topic = harness.new_topic()
    options = {"client.id": "pass-through-check", "debug": "metadata", "message.max.bytes": "2000"}
    config = config_for(harness, kafka_options=options)
    batch = [message(topic, "a", b"x" * 1000), message(topic, "a", b"x" * 3000)]

    with caplog.at_level(logging.DEBUG, logger="connectors.kafka.librdkafka"):
        assert kinds(publish_once(config, batch)) == [DELIVERED, PERMANENT]

    # librdkafka names its handle "<client.id>#producer-<n>" in every log line
    assert "pass-through-check#producer" in caplog.text


def test_invalid_option_is_a_config_error_without_secrets(harness: KafkaHarness) -> None:
    options = {"no.such.property": "1", "sasl.password": "hunter2-secret"}
    connector = KafkaConnector.from_config(config_for(harness, kafka_options=options))

    with pytest.raises(ConfigError, match=r"no\.such\.property") as raised:
        asyncio.run(connector.open())

    assert "hunter2" not in str(raised.value)
    assert raised.value.__cause__ is None  # no librdkafka traceback chained to it
    asyncio.run(connector.close(timeout=1))  # harmless after a failed open


def test_open_against_a_closed_port_fails_fast() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    config = RelayConfig(
        dsn="postgresql://unused",
        connector_options={"bootstrap.servers": bootstrap},
        connect_timeout=1,
    )
    connector = KafkaConnector.from_config(config)

    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=f"Kafka at {bootstrap} is not reachable"):
        asyncio.run(connector.open())

    assert time.monotonic() - started < 3.0


def test_a_new_producer_hears_from_a_broker_of_the_cluster(
    harness: KafkaHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only from the bootstrap address, which usually answers a new producer first:
    librdkafka asks for the idempotent producer's id when a broker of the cluster
    answers, and otherwise waits for its 500 ms retry timer, which the relay's first
    message after a start would wait for too."""
    monkeypatch.setattr(kafka, "CLUSTER_WAIT", TIMEOUT)  # the mechanism, not its bound
    client_config = KafkaConnector.from_config(config_for(harness)).client_config
    for _ in range(3):
        session = _ProducerSession(client_config)
        try:
            deadline = time.monotonic() + TIMEOUT
            while session.cluster_broker is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert session.cluster_broker is not None and session.cluster_broker >= 0
        finally:
            session.shutdown(1.0)


def test_close_is_harmless_twice_and_before_open(harness: KafkaHarness) -> None:
    async def scenario() -> list[Outcome]:
        connector = KafkaConnector.from_config(config_for(harness))
        await connector.close(timeout=1)
        await connector.open()
        empty = await connector.publish([], timeout=1)
        await connector.close(timeout=1)
        await connector.close(timeout=1)
        return empty

    assert asyncio.run(scenario()) == []


def test_stopped_broker_gives_retryable_then_recovers(private_harness: KafkaHarness) -> None:
    topic = private_harness.new_topic()
    config = config_for(private_harness, publish_timeout=2.0)

    async def scenario() -> tuple[list[Outcome], float, list[Outcome]]:
        async with opened(config) as connector:
            assert kinds(await connector.publish([message(topic, "a", b"0")], timeout=2)) == [
                DELIVERED
            ]
            private_harness.stop_broker()
            down = [message(topic, "a", b"%d" % i) for i in range(1, 6)]
            started = time.monotonic()
            while_down = await connector.publish(down, timeout=2.0)
            took = time.monotonic() - started
            await asyncio.to_thread(private_harness.start_broker)
            return while_down, took, await publish_until_delivered(connector, down)

    while_down, took, after = asyncio.run(scenario())

    assert kinds(while_down) == [RETRYABLE] * 5
    assert took < 2.0 + REPORT_GRACE + 0.5
    assert kinds(after) == [DELIVERED] * 5


async def publish_until_delivered(
    connector: KafkaConnector, batch: Sequence[OutboxMessage], deadline: float = 30.0
) -> list[Outcome]:
    """Retry RETRYABLE outcomes as the relay would: a broker that restarts may lose the
    idempotent producer's state, and the connector must get past that on its own."""
    give_up = time.monotonic() + deadline
    while True:
        outcomes = await connector.publish(batch, timeout=2.0)
        assert PERMANENT not in kinds(outcomes)
        if all(o.delivered for o in outcomes) or time.monotonic() > give_up:
            return outcomes


def test_small_producer_queue_still_delivers_everything(harness: KafkaHarness) -> None:
    topic = harness.new_topic()
    config = config_for(harness, kafka_options={"queue.buffering.max.messages": "100"})
    batch = [message(topic, f"k{i % 5}", b"%d" % i) for i in range(1000)]

    assert kinds(publish_once(config, batch)) == [DELIVERED] * 1000  # BufferError waited out


def test_paused_broker_gives_retryable_within_the_timeout(private_harness: KafkaHarness) -> None:
    topic = private_harness.new_topic()
    small_queue = {"queue.buffering.max.messages": "100"}
    config = config_for(private_harness, publish_timeout=1.0, kafka_options=small_queue)
    batch = [message(topic, "a", b"%d" % i) for i in range(300)]

    async def scenario() -> tuple[list[Outcome], float]:
        async with opened(config) as connector:
            private_harness.pause_broker()
            try:
                started = time.monotonic()
                outcomes = await connector.publish(batch, timeout=1.0)
                return outcomes, time.monotonic() - started
            finally:
                private_harness.resume_broker()

    outcomes, took = asyncio.run(scenario())

    assert kinds(outcomes) == [RETRYABLE] * 300
    assert took < 1.0 + REPORT_GRACE + 0.5
    # the first 100 waited for a report; the next never fit in librdkafka's queue, and
    # the key's later messages were held back behind it rather than sent past it
    errors = [o.error or "" for o in outcomes]
    first_full = next(i for i, e in enumerate(errors) if "queue stayed full" in e)
    assert first_full >= 100
    assert all("behind a refused message" in e for e in errors[first_full + 1 :])


def test_fatal_error_recreates_the_producer(private_harness: KafkaHarness) -> None:
    """Drives the connector's fatal-error hook (``mark_fatal``) by hand: librdkafka offers
    no portable way to fence a producer on demand. It proves the bookkeeping: batches in
    flight turn RETRYABLE at once, and the next publish runs on a fresh producer. It does
    not prove that a real fatal error reaches that hook; the restart test above usually
    does that on Tansu, which forgets producer ids when it restarts."""
    topic = private_harness.new_topic()
    config = config_for(private_harness, publish_timeout=5.0)
    fenced = KafkaError(KafkaError._FENCED, "fenced by the test", fatal=True)

    async def scenario() -> tuple[list[Outcome], float, list[Outcome], bool]:
        async with opened(config) as connector:
            old = connector._session
            assert old is not None
            private_harness.pause_broker()  # keep the batch in flight
            try:
                started = time.monotonic()
                batch = [message(topic, "a", b"1")]
                publish = asyncio.create_task(connector.publish(batch, timeout=5.0))
                await wait_until(lambda: bool(old._pending))
                await asyncio.to_thread(old.mark_fatal, fenced)
                in_flight = await publish
                took = time.monotonic() - started
            finally:
                private_harness.resume_broker()
            after = await connector.publish([message(topic, "a", b"2")], timeout=TIMEOUT)
            return in_flight, took, after, connector._session is not old

    in_flight, took, after, recreated = asyncio.run(scenario())

    assert kinds(in_flight) == [RETRYABLE]
    assert "fenced by the test" in (in_flight[0].error or "")
    assert took < 2.0  # well before the 5 s publish timeout
    assert recreated
    assert kinds(after) == [DELIVERED]


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _voluntary_switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_report_thread_sleeps_and_a_batch_after_the_quiet_is_confirmed(
    harness: KafkaHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to report on, the report thread looks at librdkafka's callbacks once
    a second, not ten times; the next batch wakes it, and close() ends it at once."""
    monkeypatch.setattr(kafka, "QUIET_AFTER", 0.2)
    topic = harness.new_topic()

    async def scenario() -> tuple[int, list[Outcome], float, float]:
        connector = KafkaConnector.from_config(config_for(harness))
        await connector.open()
        try:
            first = await connector.publish([message(topic, "k", b"1")], timeout=TIMEOUT)
            assert kinds(first) == [DELIVERED]
            session = connector._session
            assert session is not None
            await asyncio.sleep(0.5)  # quiet: the thread has stopped polling in slices
            before = _voluntary_switches(session._thread.native_id)
            await asyncio.sleep(2.0)
            switches = _voluntary_switches(session._thread.native_id) - before
            started = time.monotonic()
            second = await connector.publish([message(topic, "k", b"2")], timeout=TIMEOUT)
            took = time.monotonic() - started
        finally:
            closing = time.monotonic()
            await connector.close(timeout=TIMEOUT)
        return switches, second, took, time.monotonic() - closing

    switches, second, took, closing = asyncio.run(scenario())
    assert switches <= 4  # a look a second (each a poll and a wait), not 20 slices
    assert kinds(second) == [DELIVERED] and took < 2.0
    assert closing < 1.0
    assert [r.value for r in harness.read(topic, 2, TIMEOUT)] == [b"1", b"2"]
