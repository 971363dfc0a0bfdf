"""The three AMQP 0-9-1 frames of one ``basic.publish``, encoded without pika's objects.

pika builds a ``Basic.Publish``, a ``BasicProperties`` and three ``Frame`` objects per
message and marshals each field through generic helpers: the larger part of the relay's CPU when it
publishes to RabbitMQ (benchmarks/README.md has the measurement). The relay
only ever sends one shape of message (a fixed exchange, ``mandatory``, five properties
of known types), so this module writes those bytes directly: the ``basic.publish``
method frame is cached per routing key, the content header is one ``struct.pack`` plus
the variable strings, and the body is split at the connection's negotiated frame size.

The result is byte for byte what pika's ``Channel.basic_publish`` would send (a unit
test compares the two); pika still owns the connection, the channel and the confirms.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = b"\xce"
FRAME_OVERHEAD = 8  # type, channel, size before the payload and the end octet after it
BASIC_CLASS = 60
BASIC_PUBLISH = 40
MANDATORY = 1
PERSISTENT = 2
MAX_SHORT_STRING = 255
MAX_TIMESTAMP = 2**64 - 1  # an unsigned 64-bit field
MAX_CACHED_ROUTES = 4096

# Property flags of the content header (AMQP 0-9-1, 4.2.6.1), highest bit first.
FLAG_CONTENT_TYPE = 1 << 15
FLAG_HEADERS = 1 << 13
FLAG_DELIVERY_MODE = 1 << 12
FLAG_MESSAGE_ID = 1 << 7
FLAG_TIMESTAMP = 1 << 6

_frame_start = struct.Struct(">BHI").pack
_header_fixed = struct.Struct(">HHQH").pack  # class, weight (0), body size, flags
_long_string_start = struct.Struct(">cI").pack
_table_size = struct.Struct(">I").pack
_timestamp = struct.Struct(">BQ").pack  # preceded by the delivery-mode octet


class FieldTooLong(ValueError):
    """A field is longer than AMQP can carry: a short string over 255 bytes, or
    properties that do not fit in one frame."""


def short_string(value: str, what: str) -> bytes:
    data = value.encode()
    if len(data) > MAX_SHORT_STRING:
        raise FieldTooLong(
            f"the {what} is {len(data)} bytes long in UTF-8; AMQP allows at most "
            f"{MAX_SHORT_STRING}"
        )
    return bytes((len(data),)) + data


def string_table(table: Mapping[str, str]) -> bytes:
    """An AMQP field table whose values are all long strings ('S')."""
    pieces: list[bytes] = []
    for name, value in table.items():
        data = value.encode()
        pieces += (short_string(name, f"header name {name[:40]!r}"),
                   _long_string_start(b"S", len(data)), data)
    body = b"".join(pieces)
    return _table_size(len(body)) + body


class PublishEncoder:
    """Encodes persistent, mandatory publishes to one exchange on one channel."""

    def __init__(self, channel: int, exchange: str, frame_max: int) -> None:
        self._channel = channel
        self._exchange = short_string(exchange, "exchange name")
        self._frame_max = frame_max
        self._body_max = frame_max - FRAME_OVERHEAD
        self._methods: dict[str, bytes] = {}

    def frames(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        content_type: str,
        headers: Mapping[str, str],
        timestamp: int | None,
    ) -> list[bytes]:
        """The method, header and body frames; FieldTooLong when a field cannot be sent.

        A ``timestamp`` outside the unsigned 64-bit range is left out, as if unknown.
        """
        method = self._methods.get(routing_key) or self._method_frame(routing_key)
        flags = FLAG_CONTENT_TYPE | FLAG_HEADERS | FLAG_DELIVERY_MODE | FLAG_MESSAGE_ID
        tail = bytes((PERSISTENT,))
        if timestamp is not None and 0 <= timestamp <= MAX_TIMESTAMP:
            flags |= FLAG_TIMESTAMP
            tail = _timestamp(PERSISTENT, timestamp)
        properties = b"".join((
            _header_fixed(BASIC_CLASS, 0, len(body), flags),
            short_string(content_type, "content type"),
            string_table(headers) if headers else b"\x00\x00\x00\x00",
            tail[:1],
            short_string(message_id, "message id"),
            tail[1:],
        ))
        header = self._frame(FRAME_HEADER, properties)
        if len(header) > self._frame_max:  # the broker would close the connection on it
            raise FieldTooLong(
                f"the headers take {len(header):,} bytes; they must fit in one frame of "
                f"{self._frame_max:,} (the broker's frame_max)"
            )
        return [method, header, *self._body_frames(body)]

    def _method_frame(self, routing_key: str) -> bytes:
        arguments = struct.pack(">HHH", BASIC_CLASS, BASIC_PUBLISH, 0)  # ticket: reserved
        payload = b"".join((arguments, self._exchange,
                            short_string(routing_key, "topic (routing key)"),
                            bytes((MANDATORY,))))
        frame = self._frame(FRAME_METHOD, payload)
        if len(self._methods) >= MAX_CACHED_ROUTES:
            self._methods.clear()  # topics are few; a flood of distinct ones must not grow it
        self._methods[routing_key] = frame
        return frame

    def _body_frames(self, body: bytes) -> list[bytes]:
        step = self._body_max
        if len(body) <= step:
            return [self._frame(FRAME_BODY, body)] if body else []
        return [self._frame(FRAME_BODY, body[start:start + step])
                for start in range(0, len(body), step)]

    def _frame(self, kind: int, payload: bytes) -> bytes:
        return b"".join((_frame_start(kind, self._channel, len(payload)), payload, FRAME_END))
