"""Read the relay's message id from what each client library hands a consumer.

The relay puts the outbox id in the Kafka header ``message_id`` and in the AMQP
``message_id`` property. Where that is absent (a message from another producer) the
CloudEvents id counts: the Kafka binding's ``ce_id`` header, the AMQP binding's
``cloudEvents_id`` (or the older ``cloudEvents:id``) header. These functions work by duck
typing: they import neither confluent-kafka, aiokafka, pika nor aio-pika.

A message without an id raises :class:`MissingMessageIdError`, unless you pass ``key``:
a function of the same message object that derives an id (for example from a business
key in the payload). Prefer ids set by the producer: an id derived from the broker
position (topic, partition, offset) does not catch a message the relay published twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from relay.formats.headers import (
    AMQP_CLOUDEVENTS_OLD_PREFIX,
    AMQP_CLOUDEVENTS_PREFIX,
    KAFKA_CLOUDEVENTS_PREFIX,
    MESSAGE_ID,
)
from relay.inbox.core import MissingMessageIdError

MESSAGE_ID_HEADER = MESSAGE_ID
KAFKA_CLOUDEVENTS_ID = f"{KAFKA_CLOUDEVENTS_PREFIX}id"
AMQP_CLOUDEVENTS_IDS = (f"{AMQP_CLOUDEVENTS_PREFIX}id", f"{AMQP_CLOUDEVENTS_OLD_PREFIX}id")
_KAFKA_WHERE = f"{MESSAGE_ID_HEADER!r} header (nor a CloudEvents {KAFKA_CLOUDEVENTS_ID!r})"
_AMQP_WHERE = "AMQP message_id property (nor a CloudEvents cloudEvents_id header)"

HeaderValue = bytes | str | None


class ConfluentKafkaMessage(Protocol):
    """``confluent_kafka.Message``: ``headers()`` is a list of (name, bytes) or None."""

    def headers(self) -> Sequence[tuple[str, HeaderValue]] | None: ...


class AiokafkaRecord(Protocol):
    """``aiokafka.ConsumerRecord``: ``headers`` is a sequence of (name, bytes)."""

    @property
    def headers(self) -> Sequence[tuple[str, HeaderValue]]: ...


class AmqpProperties(Protocol):
    """``pika.BasicProperties`` and ``aio_pika.IncomingMessage`` both have ``message_id``
    (and ``headers``, read only when ``message_id`` is absent)."""

    @property
    def message_id(self) -> str | None: ...


CM = TypeVar("CM", bound=ConfluentKafkaMessage)
AR = TypeVar("AR", bound=AiokafkaRecord)
AP = TypeVar("AP", bound=AmqpProperties)


def header_value(headers: Sequence[tuple[str, HeaderValue]] | None, name: str) -> str | None:
    """The first header called ``name``, decoded from UTF-8; None if absent or empty."""
    for header_name, value in headers or ():
        if header_name != name:
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise MissingMessageIdError(
                    f"the {name!r} header is not UTF-8 text: {value[:40]!r}"
                ) from None
        return value or None
    return None


def _found_or_fallback(
    found: str | None, message: object, key: Callable[..., str] | None, where: str
) -> str:
    if found:
        return found
    if key is not None:
        derived = key(message)
        if derived:
            return derived
        raise MissingMessageIdError(
            f"the message has no {where} and the key function returned {derived!r}"
        )
    raise MissingMessageIdError(
        f"the message has no {where}, so the inbox cannot recognize duplicates of it; "
        "outbox-relay always sets one, for other producers pass key= to derive an id"
    )


def _kafka_id(headers: Sequence[tuple[str, HeaderValue]] | None) -> str | None:
    return header_value(headers, MESSAGE_ID_HEADER) or header_value(headers, KAFKA_CLOUDEVENTS_ID)


def _amqp_id(properties: object) -> str | None:
    found: str | None = getattr(properties, "message_id", None)
    if found:
        return found
    headers = getattr(properties, "headers", None) or {}
    for name in AMQP_CLOUDEVENTS_IDS:
        value = headers.get(name)
        if isinstance(value, bytes):  # pika hands table strings over as bytes
            value = value.decode("utf-8", "replace")
        if value:
            return str(value)
    return None


def confluent_kafka_message_id(message: CM, *, key: Callable[[CM], str] | None = None) -> str:
    """The ``message_id`` header of a ``confluent_kafka.Message`` (else ``ce_id``)."""
    return _found_or_fallback(_kafka_id(message.headers()), message, key, _KAFKA_WHERE)


def aiokafka_message_id(record: AR, *, key: Callable[[AR], str] | None = None) -> str:
    """The ``message_id`` header of an ``aiokafka.ConsumerRecord`` (else ``ce_id``)."""
    return _found_or_fallback(_kafka_id(record.headers), record, key, _KAFKA_WHERE)


def pika_message_id(properties: AP, *, key: Callable[[AP], str] | None = None) -> str:
    """The ``message_id`` property of the ``pika.BasicProperties`` a pika callback gets
    as its third argument (``on_message(channel, method, properties, body)``), else its
    ``cloudEvents_id`` header."""
    return _found_or_fallback(_amqp_id(properties), properties, key, _AMQP_WHERE)


def aio_pika_message_id(message: AP, *, key: Callable[[AP], str] | None = None) -> str:
    """The ``message_id`` property of an ``aio_pika.IncomingMessage``, else its
    ``cloudEvents_id`` header."""
    return _found_or_fallback(_amqp_id(message), message, key, _AMQP_WHERE)
