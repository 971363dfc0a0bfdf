"""The Kafka connector's pure parts: error codes to outcomes, headers and the
per-batch delivery bookkeeping (no broker)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from confluent_kafka import KafkaError, Message

from connectors.kafka import (
    NO_REPORT,
    KafkaConnector,
    _BatchDelivery,
    _produce_batch,
    _ProducerSession,
    content_type_header,
    message_headers,
    outcome_for,
    uuid_text,
)
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
    from connectors import kafka

    assert len(kafka._CONTENT_TYPE_HEADERS) <= kafka._MAX_CACHED_CONTENT_TYPES


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


def test_a_small_batch_is_queued_on_the_loop_and_the_careful_path_goes_to_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At a service's rate a batch is a message or two: the hop to a worker thread cost
    more than their produce() calls. From the first message produce() does not take (here
    a key that is not UTF-8) the batch goes to the worker thread, refusals and all."""
    hops: list[int] = []
    to_thread = asyncio.to_thread

    async def counted(function, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = args[4] if len(args) > 4 else 0
        hops.append(len(args[1]) - start if function is _produce_batch else -1)
        return await to_thread(function, *args, **kwargs)

    monkeypatch.setattr("connectors.kafka.asyncio.to_thread", counted)
    connector = KafkaConnector()
    connector._session = _ProducerSession({"bootstrap.servers": "", "message.timeout.ms": 60_000})

    async def publish(keys: list[str]) -> list[OutcomeKind]:
        batch = [OutboxMessage(uuid.uuid4(), "t", key, b"1") for key in keys]
        return [o.kind for o in await connector.publish(batch, timeout=0.01)]

    async def scenario() -> tuple[list[OutcomeKind], list[OutcomeKind]]:
        try:
            return await publish(["a", "b"]), await publish(["a", "b\ud800", "b", "c"])
        finally:
            await connector.close(timeout=0.0)

    small, refused = asyncio.run(scenario())
    assert small == [OutcomeKind.RETRYABLE] * 2  # queued (no broker: no report)
    assert refused == [
        OutcomeKind.RETRYABLE,
        OutcomeKind.PERMANENT,
        OutcomeKind.RETRYABLE,  # behind its key's refused message
        OutcomeKind.RETRYABLE,
    ]
    assert hops == [3, -1]  # only the refused message and those after it went to a thread


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
