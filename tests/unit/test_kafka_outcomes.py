"""The Kafka connector's pure parts: error codes to outcomes, headers, redaction, and the
per-batch delivery bookkeeping (no broker)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from confluent_kafka import KafkaError

from connectors.kafka import (
    NO_REPORT,
    KafkaConnector,
    _BatchDelivery,
    message_headers,
    outcome_for,
    redact,
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


def test_redact_blanks_secret_option_values() -> None:
    options = {"sasl.password": "hunter2", "ssl.key.password": "k3y", "client.id": "relay"}
    text = "bad value hunter2 for k3y in relay"
    assert redact(text, options) == "bad value <redacted> for <redacted> in relay"


def test_defaults_are_safe_and_options_override_them() -> None:
    config = RelayConfig(
        dsn="x", kafka_bootstrap="b:9092", publish_timeout=2.5, kafka_options={"acks": "1"}
    )
    settings = KafkaConnector.from_config(config).settings
    assert settings["bootstrap.servers"] == "b:9092"
    assert settings["enable.idempotence"] is True
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
