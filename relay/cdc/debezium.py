"""A Debezium outbox table, read the way Debezium's Outbox Event Router reads it.

Which column is the id, the routing value, the key, the payload and the event time
comes from ``DebeziumRouting`` (the router's own option names and defaults, see
relay.cdc.debezium_options). Like the router, every message carries the event id in a
header ``id``; the topic is the routing value, which the topic template turns into
``outbox.event.<value>`` by default (relay.formats). The message id (``message_id``) is
the id column when it is a UUID, else a stable name-based UUID of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from relay.cdc import values as pgtypes
from relay.cdc.debezium_options import DebeziumRouting
from relay.cdc.mapping import (
    DECODABLE_TYPES,
    JSON_TYPES,
    TEXT_TYPES,
    BoundMapping,
    Column,
    MappingError,
    RowValues,
    header_text,
    json_text,
    message_id,
    require_columns,
)
from relay.cdc.settings import TableName
from relay.model import OutboxMessage

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "id"  # the router's own header name for the event id
_TIMESTAMP_TYPES = frozenset({pgtypes.TIMESTAMP_OID, pgtypes.TIMESTAMPTZ_OID})
_PAYLOAD_TYPES = JSON_TYPES | TEXT_TYPES | {pgtypes.BYTEA_OID}


@dataclass(frozen=True)
class DebeziumMapping:
    """Rows of a Debezium outbox table ``table`` as outbox messages."""

    table: TableName
    routing: DebeziumRouting = field(default_factory=DebeziumRouting)

    def bind(self, columns: Sequence[Column]) -> BoundMapping:
        routing = self.routing
        require_columns(self.table, columns, routing.required_columns)
        types = dict(columns)
        if types[routing.payload] not in _PAYLOAD_TYPES:
            raise MappingError(f"the payload column {routing.payload} of {self.table} must be "
                               "jsonb, json, text or bytea")
        if routing.timestamp is not None and types[routing.timestamp] not in _TIMESTAMP_TYPES:
            raise MappingError(f"the timestamp column {routing.timestamp} of {self.table} "
                               "must be timestamp or timestamptz")
        headers = self._headers(columns)
        wanted = frozenset(routing.required_columns) | {column for column, _ in headers}
        return _BoundDebezium(wanted, self.table, routing, types[routing.payload], headers)

    def _headers(self, columns: Sequence[Column]) -> tuple[tuple[str, str], ...]:
        """(column, header name) of every column that travels as a header."""
        types = dict(columns)
        if self.routing.placements is not None:
            undecodable = [p.column for p in self.routing.placements
                           if types[p.column] not in DECODABLE_TYPES]
            if undecodable:
                raise MappingError(f"columns {', '.join(undecodable)} of {self.table} have "
                                   "types the relay cannot send as headers; cast them in a "
                                   "view or leave them out of the placements")
            return tuple((p.column, p.header) for p in self.routing.placements)
        routing = self.routing
        own = {routing.event_id, routing.route_by, routing.event_key, routing.payload,
               routing.timestamp}
        skipped = [name for name, oid in columns if name not in own and oid not in DECODABLE_TYPES]
        if skipped:
            log.warning("columns %s of %s have types the relay cannot decode; they are not "
                        "sent as headers", ", ".join(skipped), self.table)
        return tuple((name, name) for name, oid in columns
                     if name not in own and oid in DECODABLE_TYPES)


@dataclass(frozen=True)
class _BoundDebezium:
    columns: frozenset[str]
    table: TableName
    routing: DebeziumRouting
    payload_type: int
    headers: tuple[tuple[str, str], ...]  # (column, header name)

    @property
    def json_as_bytes(self) -> frozenset[str]:
        return frozenset({self.routing.payload})

    def is_delayed(self, row: RowValues) -> bool:
        return False  # a Debezium table has no delay: every row is published at commit

    def to_message(self, row: RowValues, position: int) -> OutboxMessage | None:
        routing = self.routing
        topic = row[routing.route_by]
        if not isinstance(topic, str) or not topic:
            raise MappingError(
                f"a row of {self.table} has no {routing.route_by} (the routing value)")
        key = row[routing.event_key]
        body, content_type = self._payload(row[routing.payload])
        headers = {name: header_text(row[column]) for column, name in self.headers
                   if row.get(column) is not None}
        event_id = row[routing.event_id]
        if event_id is not None:
            headers[EVENT_ID_HEADER] = header_text(event_id)
        return OutboxMessage(
            id=message_id(event_id, self.table),
            topic=topic,
            key=None if key is None else header_text(key),
            payload=body,
            headers=headers,
            content_type=content_type,
            position=position,
            timestamp=self._timestamp(row),
        )

    def _payload(self, value: object) -> tuple[bytes | None, str]:
        if value is None:
            return None, "application/json"
        if self.payload_type in JSON_TYPES and isinstance(value, str | bytes):
            return json_text(value), "application/json"
        if isinstance(value, bytes):
            return value, "application/octet-stream"
        return str(value).encode(), "text/plain; charset=utf-8"

    def _timestamp(self, row: RowValues) -> datetime | None:
        if self.routing.timestamp is None:
            return None
        value = row[self.routing.timestamp]
        if not isinstance(value, datetime):
            return None  # NULL: the commit time, as Debezium falls back to its own time
        # timestamp without time zone: read as UTC, as Debezium does
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
