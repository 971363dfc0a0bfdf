"""``--envelope cloudevents``: each message as a CloudEvent (CloudEvents 1.0).

The attributes: ``specversion`` 1.0, ``id`` the message id, ``source`` from
``--cloudevents-source``, ``type`` the message's ``type`` header if it has one, else its
topic (before the topic template), ``time`` the event's time (RFC 3339, UTC; see
``event_time``), ``datacontenttype`` the message's content type.

How they travel is the protocol binding's: the Kafka binding puts them in headers
prefixed ``ce_`` with ``datacontenttype`` as the ``content-type`` header; the AMQP
binding in application properties (RabbitMQ: headers) prefixed ``cloudEvents_`` with
``datacontenttype`` as the ``content_type`` property. In binary mode (the default) the
value stays the payload, byte for byte; in structured mode it becomes the JSON event
format, ``application/cloudevents+json``. Either way the relay's own ``message_id`` stays,
so the inbox works unchanged.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from relay.formats.headers import (
    AMQP_CLOUDEVENTS_PREFIX,
    CLOUDEVENTS_CONTENT_TYPE,
    KAFKA_CLOUDEVENTS_PREFIX,
)
from relay.model import OutboxMessage

SPEC_VERSION = "1.0"
BINARY = "binary"
STRUCTURED = "structured"
MODES = (BINARY, STRUCTURED)
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
TYPE_HEADER = "type"


@dataclass(frozen=True, slots=True)
class Binding:
    """How one protocol binding names the attributes."""

    name: str
    prefix: str
    # The header that carries the content type (Kafka); None where the protocol has a
    # content-type property of its own (AMQP: the connector sets it from the message).
    content_type_header: str | None


KAFKA = Binding("Kafka", KAFKA_CLOUDEVENTS_PREFIX, CLOUDEVENTS_CONTENT_TYPE)
AMQP = Binding("AMQP", AMQP_CLOUDEVENTS_PREFIX, None)


def binding_for(connector: str) -> Binding:
    """RabbitMQ speaks AMQP; every other connector gets the Kafka binding's names."""
    return AMQP if connector == "rabbitmq" else KAFKA


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as RFC 3339 (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_time(message: OutboxMessage) -> datetime | None:
    """The event's own time (a Debezium row's), else its commit time (CDC), else the
    start of its writing transaction (polling mode's ``created_at``)."""
    return message.timestamp or message.committed_at or message.created_at


def reshaped(
    message: OutboxMessage,
    *,
    topic: str | None = None,
    payload: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = None,
) -> OutboxMessage:
    """A copy of ``message`` with the given parts replaced (``dataclasses.replace`` costs
    twice as much, and this runs for every message)."""
    m = message
    return OutboxMessage(
        m.id, m.topic if topic is None else topic, m.key,
        m.payload if payload is None else payload,
        m.headers if headers is None else headers,
        m.content_type if content_type is None else content_type,
        m.position, m.created_at, m.attempts, m.committed_at, m.timestamp,
    )


def attributes(message: OutboxMessage, source: str) -> dict[str, str]:
    """The context attributes of ``message``, without ``datacontenttype``."""
    found = {
        "specversion": SPEC_VERSION,
        "id": str(message.id),
        "source": source,
        "type": message.headers.get(TYPE_HEADER) or message.topic,
    }
    moment = event_time(message)
    if moment is not None:
        found["time"] = rfc3339(moment)
    return found


@dataclass(frozen=True, slots=True)
class CloudEventsEnvelope:
    """Turns an outbox message into the same message as a CloudEvent."""

    source: str
    binding: Binding
    mode: str = BINARY

    def apply(self, message: OutboxMessage) -> OutboxMessage:
        if self.mode == STRUCTURED:
            return self._structured(message)
        prefix = self.binding.prefix
        headers = dict(message.headers)
        headers.update((prefix + name, value)
                       for name, value in attributes(message, self.source).items())
        if self.binding.content_type_header is not None:
            headers[self.binding.content_type_header] = message.content_type
        return reshaped(message, headers=headers)

    def _structured(self, message: OutboxMessage) -> OutboxMessage:
        event: dict[str, object] = {
            **attributes(message, self.source),
            "datacontenttype": message.content_type,
        }
        if message.payload is not None:
            event.update(data_member(message.payload, message.content_type))
        headers = dict(message.headers)
        if self.binding.content_type_header is not None:
            headers[self.binding.content_type_header] = STRUCTURED_CONTENT_TYPE
        return reshaped(message, payload=orjson.dumps(event), headers=headers,
                        content_type=STRUCTURED_CONTENT_TYPE)


def data_member(payload: bytes, content_type: str) -> dict[str, object]:
    """The JSON event format's ``data`` (JSON as JSON, text as a string) or
    ``data_base64`` (anything else, and JSON or text that does not parse as such)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("/json") or media.endswith("+json"):
        try:
            orjson.loads(payload)  # a binary payload may claim JSON without being JSON
        except orjson.JSONDecodeError:
            pass
        else:
            return {"data": orjson.Fragment(payload)}  # the JSON text as written
    elif media.startswith("text/"):
        try:
            return {"data": payload.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"data_base64": base64.b64encode(payload).decode("ascii")}
