"""What a Kafka record carries besides the payload: the relay's headers and the record's
timestamp (connectors.kafka produces them for every message, so each is cheap)."""

from __future__ import annotations

from binascii import hexlify
from datetime import datetime
from uuid import UUID

from relay.formats.headers import CONTENT_TYPE, MESSAGE_ID
from relay.model import OutboxMessage

_OWN_HEADERS = frozenset({MESSAGE_ID, CONTENT_TYPE})


def uuid_text(value: UUID) -> bytes:
    """``str(value).encode()`` at a fraction of the cost: UUID.__str__ formats a 128-bit
    integer in Python, and this runs for every message. The hex digits come with a dash
    every four (``hexlify``'s separator, in C), and the three the canonical 8-4-4-4-12
    form does not have are cut out."""
    h = hexlify(value.int.to_bytes(16, "big"), b"-", 2)
    return b"".join((h[:4], h[5:29], h[30:34], h[35:]))


# A message's content type as a header, encoded once per type rather than per message.
# Bounded: the types come from the outbox rows, and a writer could vary them endlessly.
_CONTENT_TYPE_HEADERS: dict[str, tuple[str, bytes]] = {}
_MAX_CACHED_CONTENT_TYPES = 64


def content_type_header(content_type: str) -> tuple[str, bytes]:
    header = _CONTENT_TYPE_HEADERS.get(content_type)
    if header is None:
        header = (CONTENT_TYPE, content_type.encode())
        if len(_CONTENT_TYPE_HEADERS) < _MAX_CACHED_CONTENT_TYPES:
            _CONTENT_TYPE_HEADERS[content_type] = header
    return header


def message_headers(message: OutboxMessage) -> list[tuple[str, str | bytes | None]]:
    """The message's own headers plus ``message_id`` and ``content_type``, which win."""
    headers: list[tuple[str, str | bytes | None]] = [
        (MESSAGE_ID, uuid_text(message.id)),
        content_type_header(message.content_type),
    ]
    if message.headers:  # usually empty: skip the filtering
        headers.extend(
            (name, value.encode())
            for name, value in message.headers.items()
            if name not in _OWN_HEADERS
        )
    return headers


def timestamp_ms(moment: datetime) -> int:
    """A record's CreateTime: the message's own time in ms since the epoch. 0 (what the
    produce loop passes for a message without one) librdkafka reads as "now"."""
    return max(0, int(moment.timestamp() * 1000))
