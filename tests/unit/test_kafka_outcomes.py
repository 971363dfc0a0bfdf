"""The Kafka connector's pure parts: error codes to outcomes, headers and the
per-batch delivery bookkeeping (no broker)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from confluent_kafka import KafkaError, Message

from connectors.kafka import (
    INLINE_BATCH,
    NO_REPORT,
    KafkaConnector,
    _BatchDelivery,
    _produce_batch,
    _ProducerSession,
    _Production,
    outcome_for,
)
from connectors.kafka_records import content_type_header, message_headers, uuid_text
from relay.config import RelayConfig
from relay.model import DELIVERED, OutboxMessage, OutcomeKind, permanent, retryable


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._FATAL,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.SASL_AUTHENTICATION_FAILED,  # the broker's state, not the message's
    ],
)
def test_transient_errors_are_retryable(code: int) -> None:
    assert outcome_for(KafkaError(code)).kind is OutcomeKind.RETRYABLE


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._INVALID_ARG,
    ],
)
def test_message_faults_are_permanent(code: int) -> None:
    assert outcome_for(KafkaError(code)).kind is OutcomeKind.PERMANENT


def test_permanence_comes_from_the_code_not_the_flags() -> None:
    # librdkafka may flag UNKNOWN_TOPIC_OR_PART retriable; it is still about the topic
    flagged = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "no such topic", retriable=True)
    assert outcome_for(flagged).kind is OutcomeKind.PERMANENT
    # a fatal producer error is fixed by a new producer, whatever its code says
    fatal = KafkaError(KafkaError._INVALID_ARG, "fenced", fatal=True)
    assert outcome_for(fatal).kind is OutcomeKind.RETRYABLE


def test_headers_carry_id_and_content_type_first_and_win() -> None:
    message = OutboxMessage(
        uuid.UUID(int=1),
        "t",
        None,
        b"",
        headers={"trace": "ä", "message_id": "spoofed"},
        content_type="text/plain",
    )
    assert message_headers(message) == [
        ("message_id", b"00000000-0000-0000-0000-000000000001"),
        ("content_type", b"text/plain"),
        ("trace", "ä".encode()),
    ]


def test_uuid_text_is_the_canonical_form() -> None:
    for value in [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), *(uuid.uuid4() for _ in range(50))]:
        assert uuid_text(value) == str(value).encode()


def test_content_type_headers_are_cached_up_to_a_bound() -> None:
    assert content_type_header("application/json") is content_type_header("application/json")
    for n in range(200):  # a writer inventing types cannot grow the cache without end
        assert content_type_header(f"x/{n}") == ("content_type", f"x/{n}".encode())
    from connectors import kafka_records

    assert len(kafka_records._CONTENT_TYPE_HEADERS) <= kafka_records._MAX_CACHED_CONTENT_TYPES


class _ReportedIndices(_BatchDelivery):
    """A batch delivery that also records which messages got a delivery report."""

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(size, loop)
        self.reported: list[int] = []

    def on_delivery(self, index: int, err: KafkaError | None, msg: Message) -> None:
        self.reported.append(index)
        super().on_delivery(index, err, msg)


def test_produce_loop_refuses_an_unencodable_message_and_holds_back_its_key() -> None:
    """The inline produce and its careful fallback: a key or header that is not valid
    UTF-8 is refused for good, later messages of its key wait (RETRYABLE), the others
    are queued. A producer with no broker only queues."""
    session = _ProducerSession({"bootstrap.servers": "", "message.timeout.ms": 600_000})
    loop = asyncio.new_event_loop()
    try:
        batch = [
            OutboxMessage(uuid.uuid4(), "t", "a", b"1"),
            OutboxMessage(uuid.uuid4(), "t", "b\ud800", b"2"),
            OutboxMessage(uuid.uuid4(), "t", "b\ud800", b"3"),
            OutboxMessage(uuid.uuid4(), "t", "c", b"4", headers={"h": "\udc00"}),
            OutboxMessage(uuid.uuid4(), "t", None, b"5"),
        ]
        delivery = _ReportedIndices(len(batch), loop)
        _produce_batch(session, batch, delivery, deadline=0.0)
        outcomes = delivery.seal()
        assert [o.kind for o in outcomes] == [
            OutcomeKind.RETRYABLE,  # queued: no report yet
            OutcomeKind.PERMANENT,
            OutcomeKind.RETRYABLE,
            OutcomeKind.PERMANENT,
            OutcomeKind.RETRYABLE,
        ]
        assert "not valid UTF-8" in (outcomes[1].error or "")
        assert outcomes[2].error == "behind a refused message of the same key"
        assert outcomes[0] == outcomes[4] == NO_REPORT
    finally:
        session.shutdown(0.0)  # purges the queue: each queued message reports, once
        loop.close()
    # Not len(session.producer): librdkafka counts its queued events there too (the
    # warning about the empty bootstrap.servers, until the report thread serves it).
    assert sorted(delivery.reported) == [0, 4]  # the two good messages, and only they


def test_a_produce_on_the_event_loop_stops_at_a_full_queue_and_the_worker_goes_on() -> None:
    """The inline go queues what produce() takes at once and hands the first message
    that has to wait to the careful go, which goes on from it in batch order."""
    session = _ProducerSession({"bootstrap.servers": "", "message.timeout.ms": 600_000,
                                "queue.buffering.max.messages": 1})
    loop = asyncio.new_event_loop()
    try:
        batch = [OutboxMessage(uuid.uuid4(), "t", key, b"x") for key in ("a", "b", "c")]
        delivery = _ReportedIndices(len(batch), loop)
        production = _Production(session, batch, delivery, deadline=0.0)
        assert production.run(careful=False) is False  # the second found the queue full
        assert production.run(careful=True) is True
        outcomes = delivery.seal()
        assert outcomes[0] == NO_REPORT  # queued: no report yet
        assert [o.kind for o in outcomes[1:]] == [OutcomeKind.RETRYABLE] * 2
        assert all("queue stayed full" in (o.error or "") for o in outcomes[1:])
    finally:
        session.shutdown(0.0)
        loop.close()
    assert delivery.reported == [0]  # queued once, and only the first


def test_only_a_large_batch_goes_to_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    hops: list[object] = []
    to_thread = asyncio.to_thread

    async def counted(func: object, /, *args: object, **kwargs: object) -> object:
        hops.append(func)
        return await to_thread(func, *args, **kwargs)  # type: ignore[arg-type]

    async def scenario() -> None:
        connector = KafkaConnector()
        connector._session = _ProducerSession({"bootstrap.servers": "",
                                               "message.timeout.ms": 600_000})
        monkeypatch.setattr(asyncio, "to_thread", counted)
        try:
            for size in (1, INLINE_BATCH, INLINE_BATCH + 1):
                batch = [OutboxMessage(uuid.uuid4(), "t", "k", b"x") for _ in range(size)]
                outcomes = await connector.publish(batch, timeout=0.0)
                assert outcomes == [NO_REPORT] * size
        finally:
            monkeypatch.undo()
            await connector.close(timeout=0.0)

    asyncio.run(scenario())
    assert len(hops) == 1  # the batch of INLINE_BATCH + 1 alone


def test_a_batch_waits_for_its_reports_without_asyncio_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One future and one timer per batch: the last report or the timeout ends the wait,
    and a cancelled caller leaves no timer behind."""

    async def no_asyncio_wait(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("asyncio.wait used")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(asyncio, "wait", no_asyncio_wait)
        reported = _BatchDelivery(1, loop)
        loop.call_later(0.01, reported.settle, 0, DELIVERED)
        await reported.wait(30)
        assert reported.seal() == [DELIVERED]
        silent = _BatchDelivery(1, loop)
        started = loop.time()
        await silent.wait(0.02)
        assert 0.015 <= loop.time() - started < 5
        assert silent.seal() == [NO_REPORT]
        cancelled = asyncio.ensure_future(_BatchDelivery(1, loop).wait(30))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert all(h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_defaults_are_safe_and_options_override_them() -> None:
    config = RelayConfig(
        dsn="x",
        publish_timeout=2.5,
        connector_options={"bootstrap.servers": "b:9092", "acks": "1"},
    )
    settings = KafkaConnector.from_config(config).client_config
    assert settings["bootstrap.servers"] == "b:9092"
    assert settings["enable.idempotence"] == "true"
    assert settings["compression.type"] == "lz4"
    assert settings["message.timeout.ms"] == 2500
    assert settings["acks"] == "1"


def test_batch_resolves_once_every_report_is_in() -> None:
    async def scenario() -> list[OutcomeKind]:
        delivery = _BatchDelivery(3, asyncio.get_running_loop())
        reporters = [
            threading.Thread(target=delivery.on_delivery, args=(0, None, None)),
            threading.Thread(target=delivery.settle, args=(2, permanent("too big"))),
            threading.Thread(
                target=delivery.on_delivery, args=(1, KafkaError(KafkaError._MSG_TIMED_OUT), None)
            ),
        ]
        for reporter in reporters:
            reporter.start()
        await asyncio.wait_for(delivery.done, timeout=5)
        return [o.kind for o in delivery.seal()]

    assert asyncio.run(scenario()) == [
        OutcomeKind.DELIVERED,
        OutcomeKind.RETRYABLE,
        OutcomeKind.PERMANENT,
    ]


def test_sealed_batch_ignores_late_reports_and_fills_gaps() -> None:
    async def scenario() -> None:
        delivery = _BatchDelivery(2, asyncio.get_running_loop())
        delivery.settle(0, DELIVERED)
        assert delivery.seal() == [DELIVERED, NO_REPORT]
        delivery.settle(1, DELIVERED)  # too late: the caller already has its outcomes
        delivery.settle_rest(retryable("closed"))
        assert not delivery.done.done()

    asyncio.run(scenario())
