"""From a captured row to an outbox message: the relay's own table (here), or a Debezium
one (``relay.cdc.debezium``).

A mapping is bound once to the table's columns (name and type oid, from a pgoutput
Relation message or a cursor description) and then turns rows, given as
``{column: decoded value}`` with json/jsonb as JSON text (a ``str``, or its UTF-8 bytes
for the columns a bound mapping names in ``json_as_bytes``), into ``OutboxMessage``s. The
same rows come from the stream (``relay.cdc.values``) and from the snapshot query, so
both publish identical messages.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

import orjson

from relay.cdc import values as pgtypes
from relay.cdc.settings import TableName
from relay.errors import PermanentError
from relay.model import OutboxMessage

log = logging.getLogger(__name__)

RowValues = Mapping[str, object]
Column = tuple[str, int]  # name, type oid

JSON_TYPES = frozenset({pgtypes.JSON_OID, pgtypes.JSONB_OID})
TEXT_TYPES = frozenset({pgtypes.TEXT_OID, pgtypes.VARCHAR_OID, pgtypes.BPCHAR_OID})
DECODABLE_TYPES = frozenset({
    pgtypes.BOOL_OID, pgtypes.BYTEA_OID, pgtypes.NAME_OID, pgtypes.INT8_OID, pgtypes.INT2_OID,
    pgtypes.INT4_OID, pgtypes.OID_OID, pgtypes.TIMESTAMP_OID, pgtypes.TIMESTAMPTZ_OID,
    pgtypes.UUID_OID, *JSON_TYPES, *TEXT_TYPES,
})
# Ids that are not UUIDs (a Debezium table with a text id) become name-based UUIDs.
ID_NAMESPACE = uuid.UUID("6f0c64e6-61c9-4c8a-9d0e-8c1f3f7a2b10")


class MappingError(PermanentError):
    """A captured row or logical message cannot become an outbox message."""


def json_text(text: str | bytes | bytearray | memoryview) -> bytes:
    """JSON text as the bytes to publish, unchanged: the column's text (as written for
    json, PostgreSQL's normalized text for jsonb), exactly what polling mode publishes."""
    return text.encode() if isinstance(text, str) else bytes(text)


def header_text(value: object) -> str:
    """Headers are strings on the wire; other values travel as JSON or ISO text."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, UUID):
        return str(value)
    return orjson.dumps(value, default=str).decode()


def message_id(value: object, table: TableName) -> UUID:
    if isinstance(value, UUID):
        return value
    if value is None:
        raise MappingError(f"a row of {table} has no id")
    try:
        return UUID(str(value))
    except ValueError:
        return uuid.uuid5(ID_NAMESPACE, f"{table}:{value}")


class BoundMapping(Protocol):
    """A mapping bound to one shape of the table."""

    @property
    def columns(self) -> frozenset[str]:
        """The columns it reads; the others need not be decoded."""
        ...

    @property
    def json_as_bytes(self) -> frozenset[str]:
        """Columns whose JSON it takes as the UTF-8 bytes of the text as well as a ``str``:
        the payload, which is published as bytes, so the stream need not decode it."""
        ...

    def to_message(self, row: RowValues, position: int) -> OutboxMessage | None:
        """The message of ``row``, or None for a row that is not an event to publish."""
        ...

    def is_delayed(self, row: RowValues) -> bool:
        """For a row ``to_message`` turned down: whether it is a delayed message, which
        waits in the scheduled table until a relay moves it into the outbox
        (``relay.scheduler``)."""
        ...


class RowMapping(Protocol):
    @property
    def table(self) -> TableName: ...

    def bind(self, columns: Sequence[Column]) -> BoundMapping:
        """Check the table has what the mapping needs; raise MappingError if not."""
        ...


def require_columns(
    table: TableName, columns: Sequence[Column], names: Sequence[str]
) -> None:
    present = {name for name, _ in columns}
    missing = [name for name in names if name not in present]
    if missing:
        raise MappingError(
            f"the captured table {table} has no column {', '.join(missing)}; "
            "check --cdc-table and --cdc-debezium"
        )


# --- the relay's own outbox table --------------------------------------------------------

_OUTBOX_REQUIRED = ("id", "topic", "key", "payload", "payload_bytes", "headers")
_OUTBOX_OPTIONAL = ("content_type", "created_at", "sent_at", "parked_at", "set_aside_at")


@dataclass(frozen=True)
class OutboxTableMapping:
    """``<schema>.messages``: the same message polling mode would build from the row.

    Rows inserted already sent or parked (the relay's own parking) are not events, nor
    rows inserted set aside (relay.cdc.aside publishes those from the table). A delayed
    message is one of the first kind: migration 8's trigger marks it sent as it moves it
    to the scheduled table (so the stream needs no test of its own, and decodes no column
    more); it is published from its second insert, when it is due.
    """

    table: TableName

    def bind(self, columns: Sequence[Column]) -> BoundMapping:
        require_columns(self.table, columns, _OUTBOX_REQUIRED)
        names = {name for name, _ in columns}
        wanted = frozenset(_OUTBOX_REQUIRED) | (names & set(_OUTBOX_OPTIONAL))
        return _BoundOutbox(wanted, self.table)


@dataclass(frozen=True)
class _BoundOutbox:
    columns: frozenset[str]
    table: TableName
    json_as_bytes: frozenset[str] = frozenset({"payload"})

    def to_message(self, row: RowValues, position: int) -> OutboxMessage | None:
        # Runs for every captured event: the usual values (a UUID, str, no headers) are
        # taken as they are, without a call each to convert them, and the message is
        # built from positional arguments (keywords cost as much again as the call).
        get = row.get
        if (
            get("sent_at") is not None
            or get("parked_at") is not None
            or get("set_aside_at") is not None
        ):
            return None
        ident, topic, key, headers = row["id"], row["topic"], row["key"], row["headers"]
        created = get("created_at")
        content_type = get("content_type") or "application/json"
        return OutboxMessage(
            ident if type(ident) is UUID else message_id(ident, self.table),
            topic if type(topic) is str else str(topic),
            key if key is None or type(key) is str else str(key),
            _outbox_body(row["payload_bytes"], row["payload"]),
            {} if headers is None or headers == "{}" else _json_object_headers(headers),
            content_type if type(content_type) is str else str(content_type),
            position,
            created if isinstance(created, datetime) else None,
        )

    def is_delayed(self, row: RowValues) -> bool:
        # Only migration 8's trigger writes a row already sent; the relay parks, and a
        # parked row has parked_at.
        return row.get("sent_at") is not None and row.get("parked_at") is None


def _outbox_body(raw: object, payload: object) -> bytes | None:
    if isinstance(raw, bytes):
        return raw
    if isinstance(payload, bytes):  # from the stream, json_as_bytes
        return payload
    if isinstance(payload, str):
        return json_text(payload)
    return None


def _json_object_headers(value: object) -> dict[str, str]:
    if value is None or value == "{}":  # the column's default, in most events
        return {}
    parsed = orjson.loads(value) if isinstance(value, str | bytes) else value
    if not isinstance(parsed, dict):
        raise MappingError("the headers column does not hold a JSON object")
    return {str(name): header_text(item) for name, item in parsed.items()}
