"""Read the relay's message id from what each client library hands a consumer.

The relay puts the outbox id in the Kafka header ``message_id`` and in the AMQP
``message_id`` property. These functions work by duck typing: they import neither
confluent-kafka, aiokafka, pika nor aio-pika.

A message without an id raises :class:`MissingMessageIdError`, unless you pass ``key``:
a function of the same message object that derives an id (for example from a business
key in the payload). Prefer ids set by the producer: an id derived from the broker
position (topic, partition, offset) does not catch a message the relay published twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from relay.inbox.core import MissingMessageIdError

MESSAGE_ID_HEADER = "message_id"

HeaderValue = bytes | str | None


class ConfluentKafkaMessage(Protocol):
    """``confluent_kafka.Message``: ``headers()`` is a list of (name, bytes) or None."""

    def headers(self) -> Sequence[tuple[str, HeaderValue]] | None: ...


class AiokafkaRecord(Protocol):
    """``aiokafka.ConsumerRecord``: ``headers`` is a sequence of (name, bytes)."""

    @property
    def headers(self) -> Sequence[tuple[str, HeaderValue]]: ...


class AmqpProperties(Protocol):
    """``pika.BasicProperties`` and ``aio_pika.IncomingMessage`` both have ``message_id``."""

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


def confluent_kafka_message_id(message: CM, *, key: Callable[[CM], str] | None = None) -> str:
    """The ``message_id`` header of a ``confluent_kafka.Message``."""
    found = header_value(message.headers(), MESSAGE_ID_HEADER)
    return _found_or_fallback(found, message, key, f"{MESSAGE_ID_HEADER!r} header")


def aiokafka_message_id(record: AR, *, key: Callable[[AR], str] | None = None) -> str:
    """The ``message_id`` header of an ``aiokafka.ConsumerRecord``."""
    found = header_value(record.headers, MESSAGE_ID_HEADER)
    return _found_or_fallback(found, record, key, f"{MESSAGE_ID_HEADER!r} header")


def pika_message_id(properties: AP, *, key: Callable[[AP], str] | None = None) -> str:
    """The ``message_id`` property of the ``pika.BasicProperties`` a pika callback gets
    as its third argument (``on_message(channel, method, properties, body)``)."""
    return _found_or_fallback(properties.message_id, properties, key, "AMQP message_id property")


def aio_pika_message_id(message: AP, *, key: Callable[[AP], str] | None = None) -> str:
    """The ``message_id`` property of an ``aio_pika.IncomingMessage``."""
    return _found_or_fallback(message.message_id, message, key, "AMQP message_id property")
