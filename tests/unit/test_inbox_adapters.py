"""The inbox's pure logic: message ids read from fake client messages, id and name checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID, uuid4

import pytest

from connectors.kafka import message_headers
from relay.cli.inbox import describe_migration, migration_tracks
from relay.errors import ConfigError, PermanentError
from relay.inbox import (
    AsyncInbox,
    Inbox,
    InboxClaim,
    MissingMessageIdError,
    aio_pika_message_id,
    aiokafka_message_id,
    confluent_kafka_message_id,
    pika_message_id,
)
from relay.inbox.core import MAX_MESSAGE_ID_LENGTH, message_key
from relay.migrations import Migration
from relay.model import OutboxMessage

MESSAGE_ID = "0191d3a4-5b6c-7d8e-9f00-112233445566"


class FakeConfluentMessage:
    """Like confluent_kafka.Message: headers() returns a list of tuples, or None."""

    def __init__(self, headers: list[tuple[str, bytes | None]] | None, offset: int = 7) -> None:
        self._headers = headers
        self._offset = offset

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def topic(self) -> str:
        return "payments"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


@dataclass
class FakeAiokafkaRecord:
    """Like aiokafka.ConsumerRecord: headers is a sequence of (name, bytes)."""

    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "payments"
    offset: int = 7


@dataclass
class FakeAmqpProperties:
    """Like pika.BasicProperties and aio_pika.IncomingMessage."""

    message_id: str | None = None
    correlation_id: str | None = None
    headers: dict[str, object] | None = None


# --- Kafka --------------------------------------------------------------------------------


def test_confluent_kafka_message_id_reads_the_header():
    message = FakeConfluentMessage(
        [("content_type", b"application/json"), ("message_id", MESSAGE_ID.encode())]
    )
    assert confluent_kafka_message_id(message) == MESSAGE_ID


def test_the_first_message_id_header_wins():
    message = FakeConfluentMessage([("message_id", b"first"), ("message_id", b"second")])
    assert confluent_kafka_message_id(message) == "first"


@pytest.mark.parametrize(
    "headers", [None, [], [("other", b"x")], [("message_id", None)], [("message_id", b"")]]
)
def test_confluent_kafka_message_without_id_is_refused(headers):
    with pytest.raises(MissingMessageIdError, match="'message_id' header") as caught:
        confluent_kafka_message_id(FakeConfluentMessage(headers))
    assert isinstance(caught.value, PermanentError)


def test_a_key_function_derives_the_id_of_a_message_without_one():
    message = FakeConfluentMessage(None, offset=42)
    derived = confluent_kafka_message_id(
        message, key=lambda m: f"{m.topic()}/{m.partition()}/{m.offset()}"
    )
    assert derived == "payments/0/42"


def test_the_key_function_is_not_called_when_the_header_is_there():
    def never(_message: FakeConfluentMessage) -> str:
        raise AssertionError("called")

    message = FakeConfluentMessage([("message_id", b"abc")])
    assert confluent_kafka_message_id(message, key=never) == "abc"


def test_a_key_function_returning_nothing_is_refused():
    with pytest.raises(MissingMessageIdError, match="key function returned ''"):
        confluent_kafka_message_id(FakeConfluentMessage(None), key=lambda _m: "")


def test_a_header_that_is_not_utf8_is_refused_clearly():
    with pytest.raises(MissingMessageIdError, match="not UTF-8"):
        confluent_kafka_message_id(FakeConfluentMessage([("message_id", b"\xff\xfe")]))


def test_aiokafka_record_headers_are_a_list_of_tuples():
    record = FakeAiokafkaRecord([("message_id", MESSAGE_ID.encode())])
    assert aiokafka_message_id(record) == MESSAGE_ID
    with pytest.raises(MissingMessageIdError):
        aiokafka_message_id(FakeAiokafkaRecord())
    assert aiokafka_message_id(FakeAiokafkaRecord(), key=lambda r: f"{r.topic}@{r.offset}") == (
        "payments@7"
    )


def test_the_kafka_connector_envelope_is_what_the_adapter_reads():
    message = OutboxMessage(
        id=uuid4(),
        topic="payments",
        key="acct-1",
        payload=b"{}",
        headers={"message_id": "spoofed", "trace": "t-1"},
    )
    # confluent-kafka hands the consumer bytes for every header value
    received = [
        (name, value.encode() if isinstance(value, str) else value)
        for name, value in message_headers(message)
    ]
    assert confluent_kafka_message_id(FakeConfluentMessage(received)) == str(message.id)


# --- AMQP ---------------------------------------------------------------------------------


def test_pika_properties_carry_the_message_id():
    assert pika_message_id(FakeAmqpProperties(message_id=MESSAGE_ID)) == MESSAGE_ID


def test_aio_pika_message_carries_the_message_id():
    assert aio_pika_message_id(FakeAmqpProperties(message_id=MESSAGE_ID)) == MESSAGE_ID


@pytest.mark.parametrize("adapter", [pika_message_id, aio_pika_message_id])
def test_amqp_message_without_id_is_refused_or_keyed(adapter):
    with pytest.raises(MissingMessageIdError, match="AMQP message_id property"):
        adapter(FakeAmqpProperties())
    keyed = adapter(FakeAmqpProperties(correlation_id="req-9"), key=lambda p: p.correlation_id)
    assert keyed == "req-9"


# --- ids, names, claims -------------------------------------------------------------------


def test_uuid_ids_are_recorded_in_canonical_text():
    value = UUID(MESSAGE_ID.upper())
    assert message_key(value) == MESSAGE_ID


def test_text_ids_are_recorded_as_given():
    assert message_key("order-17/v2") == "order-17/v2"


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_ids_are_refused(missing):
    with pytest.raises(MissingMessageIdError, match=r"relay\.inbox\.adapters"):
        message_key(missing)


def test_ids_the_index_cannot_hold_are_refused():
    with pytest.raises(ValueError, match=f"up to {MAX_MESSAGE_ID_LENGTH} characters"):
        message_key("x" * (MAX_MESSAGE_ID_LENGTH + 1))
    with pytest.raises(ValueError, match="NUL"):
        message_key("a\x00b")
    with pytest.raises(TypeError, match="bytes"):
        message_key(b"abc")


@pytest.mark.parametrize("schema", ["Outbox", "out-box", "1st", 'x"; DROP TABLE y; --'])
def test_the_schema_must_be_a_plain_identifier(schema):
    with pytest.raises(ConfigError, match="plain identifier"):
        Inbox(consumer="billing", schema=schema)


@pytest.mark.parametrize("consumer", ["", "c" * 101])
def test_the_consumer_name_is_checked(consumer):
    with pytest.raises(ConfigError, match="consumer name"):
        AsyncInbox(consumer=consumer)


def test_a_sync_inbox_refuses_an_async_connection_and_back():
    class NotAConnection:
        pass

    with (
        pytest.raises(TypeError, match="use AsyncInbox"),
        Inbox(consumer="billing").claim(NotAConnection(), "m-1"),
    ):
        pass


def test_a_duplicate_keeps_its_first_result():
    claim = InboxClaim("m-1", duplicate=True, result={"invoice": 1})
    with pytest.raises(RuntimeError, match="first result is kept"):
        claim.keep_result({"invoice": 2})


def test_results_kept_for_duplicates_must_be_json():
    claim = InboxClaim("m-1", duplicate=False)
    with pytest.raises(TypeError, match="JSON-serializable"):
        claim.keep_result(object())
    claim.keep_result({"invoice": 1})
    assert claim.result == {"invoice": 1}


# --- CLI helpers --------------------------------------------------------------------------


def test_inbox_only_migrates_the_inbox_track_alone():
    assert migration_tracks(inbox_only=True) == ("inbox",)
    assert migration_tracks(inbox_only=False) == ("outbox", "inbox")


def test_the_migrate_summary_names_each_track():
    applied = [Migration(1, "outbox", ""), Migration(1, "inbox", "", track="inbox")]
    assert describe_migration("outbox", applied, ("outbox", "inbox")) == (
        "outbox and inbox schema 'outbox': applied 0001_outbox, inbox/0001_inbox"
    )
    assert describe_migration("app", [], ("inbox",)) == "inbox schema 'app' is up to date"


def test_only_an_inbox_that_keeps_results_can_keep_one():
    claim = InboxClaim("m-1", duplicate=False, keeps_results=False)
    with pytest.raises(RuntimeError, match="keep_results=True"):
        claim.keep_result({"invoice": 1})


# --- CloudEvents ids, for messages without the relay's own ------------------------------------


def test_kafka_adapters_fall_back_to_the_cloudevents_id():
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"evt-1")]
    assert confluent_kafka_message_id(FakeConfluentMessage(headers)) == "evt-1"
    assert aiokafka_message_id(FakeAiokafkaRecord(headers)) == "evt-1"
    both = [("ce_id", b"evt-1"), ("message_id", MESSAGE_ID.encode())]
    assert confluent_kafka_message_id(FakeConfluentMessage(both)) == MESSAGE_ID  # ours first
    with pytest.raises(MissingMessageIdError, match="'ce_id'"):
        confluent_kafka_message_id(FakeConfluentMessage([("ce_id", b"")]))


@pytest.mark.parametrize("adapter", [pika_message_id, aio_pika_message_id])
@pytest.mark.parametrize("name", ["cloudEvents_id", "cloudEvents:id"])
def test_amqp_adapters_fall_back_to_the_cloudevents_id_header(adapter, name):
    assert adapter(FakeAmqpProperties(headers={name: b"evt-2"})) == "evt-2"
    assert adapter(FakeAmqpProperties(headers={name: "evt-3"})) == "evt-3"
    assert adapter(FakeAmqpProperties(message_id=MESSAGE_ID, headers={name: "x"})) == MESSAGE_ID
    with pytest.raises(MissingMessageIdError, match="cloudEvents_id"):
        adapter(FakeAmqpProperties(headers={"other": "x"}))
