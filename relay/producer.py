"""Write events into the outbox from Python, inside the caller's own transaction.

The SQL functions ``<schema>.enqueue`` / ``enqueue_binary`` / ``enqueue_many`` are the
contract for every language. From Python these helpers insert the rows themselves, with
the same columns and defaults: calling the function would cost the server a second
executor for every row. :func:`enqueue_many` writes a whole list in one statement, the
way to write a bulk load.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

import orjson
import psycopg
from psycopg.rows import scalar_row

from relay.config import DEFAULT_SCHEMA
from relay.headers import first_reserved, reserved_header_message
from relay.names import check_schema_name
from relay.sqlfiles import query

JsonValue = Any
Delay = timedelta | float | int  # a number is seconds
Params = Sequence[Any] | Mapping[str, Any]  # a statement's, by position or by name
JSON = "application/json"
BINARY = "application/octet-stream"
_BYTES_LIKE = (bytes, bytearray, memoryview)
MESSAGE_FIELDS = frozenset(
    {"topic", "key", "payload", "headers", "content_type", "deliver_at", "delay"}
)
_USUAL_FIELDS = frozenset({"topic", "key", "payload"})


class _Row(NamedTuple):
    """One message as the columns a writer sets (None: the table's default)."""

    topic: str
    key: str | None
    payload: str | None  # JSON text
    payload_bytes: bytes | None
    headers: str | None  # a JSON object's text; None when there are none
    content_type: str | None
    deliver_at: datetime | None
    delay: timedelta | None


@functools.cache
def _sql(name: str, schema: str) -> bytes:
    """A statement as bytes, rendered once per schema: psycopg would otherwise compose
    the identifier into the text again on every call."""
    check_schema_name(schema)
    return query(name, schema).as_bytes(None)


def _schedule(deliver_at: datetime | None, delay: Delay | None) -> tuple[Any, Any]:
    """When the message becomes due: ``(deliver_at, None)``, ``(None, delay)`` or neither
    (at once). The database adds a delay to its own clock, so the application's clock
    does not matter for it; a deliver_at is an instant, so it must carry its zone."""
    if deliver_at is not None and delay is not None:
        raise ValueError("give deliver_at or delay, not both")
    if deliver_at is not None:
        if not isinstance(deliver_at, datetime) or deliver_at.utcoffset() is None:
            raise ValueError("deliver_at must be a timezone-aware datetime")
        return deliver_at, None
    if delay is None or isinstance(delay, timedelta):
        return None, delay
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
        raise ValueError("delay must be a timedelta or a finite number of seconds")
    try:
        return None, timedelta(seconds=delay)
    except OverflowError:
        raise ValueError("delay is too long for a timedelta") from None


def _row(
    topic: str,
    key: str | None,
    payload: JsonValue | bytes,
    headers: Mapping[str, str] | None,
    content_type: str | None,
    when: tuple[datetime | None, timedelta | None] = (None, None),
) -> _Row:
    header_text = None
    if headers:
        reserved = first_reserved(headers)
        if reserved is not None:
            raise ValueError(reserved_header_message(reserved))
        header_text = orjson.dumps(dict(headers)).decode()
    if isinstance(payload, _BYTES_LIKE):
        data = bytes(payload)
        return _Row(topic, key, None, data, header_text, content_type or BINARY, *when)
    if content_type not in (None, JSON):
        raise ValueError("JSON payloads are sent as application/json; pass bytes for others")
    return _Row(topic, key, orjson.dumps(payload).decode(), None, header_text, None, *when)


def _one(
    schema: str,
    topic: str,
    key: str | None,
    payload: JsonValue | bytes,
    headers: Mapping[str, str] | None,
    content_type: str | None,
    deliver_at: datetime | None,
    delay: Delay | None,
) -> tuple[bytes, Params]:
    """The statement and parameters for one message. The usual one (a JSON payload, no
    headers, due now) goes the short way: an application may call enqueue() for every
    row of a bulk write, and the checks and tuples of the general way were a measurable
    part of its own cost per row (benchmarks/README.md)."""
    usual = headers is None and content_type is None and deliver_at is None
    if usual and delay is None and not isinstance(payload, _BYTES_LIKE):
        return _sql("enqueue_json", schema), (topic, key, orjson.dumps(payload).decode())
    when = _schedule(deliver_at, delay)
    return _statement(schema, _row(topic, key, payload, headers, content_type, when))


def _statement(schema: str, row: _Row) -> tuple[bytes, Params]:
    usual = row.payload_bytes is None and row.headers is None
    if usual and row.deliver_at is None and row.delay is None:
        return _sql("enqueue_json", schema), (row.topic, row.key, row.payload)
    params = row._asdict()
    params["headers"] = row.headers or "{}"
    params["content_type"] = row.content_type or JSON
    return _sql("enqueue_message", schema), params


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def enqueue(
    conn: psycopg.Connection[Any],
    *,
    topic: str,
    key: str | None,
    payload: JsonValue | bytes,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = None,
    deliver_at: datetime | None = None,
    delay: Delay | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> UUID:
    """Add one event to the outbox in ``conn``'s current transaction; return its id.

    ``payload`` is any JSON-serializable value (stored and published as orjson's compact
    text) or bytes (published byte for byte with ``content_type``). Messages with the
    same ``key`` are published in commit order; ``key=None`` means no ordering
    requirement. ``deliver_at`` (a timezone-aware datetime) or ``delay`` (a timedelta or
    seconds, counted by the database's clock from this call) hold the message back until
    then; a time already past means at once.
    """
    statement, params = _one(schema, topic, key, payload, headers, content_type, deliver_at, delay)
    # A cursor of our own row factory (the caller's connection may make dicts of rows),
    # left open as conn.execute() leaves its own: a client-side cursor holds nothing on
    # the server, and closing it is a measurable part of this per-row call.
    cursor = conn.cursor(row_factory=scalar_row)
    return _uuid(cursor.execute(statement, params).fetchone())


async def enqueue_async(
    conn: psycopg.AsyncConnection[Any],
    *,
    topic: str,
    key: str | None,
    payload: JsonValue | bytes,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = None,
    deliver_at: datetime | None = None,
    delay: Delay | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> UUID:
    """The asyncio twin of :func:`enqueue`, sharing its SQL."""
    statement, params = _one(schema, topic, key, payload, headers, content_type, deliver_at, delay)
    cursor = conn.cursor(row_factory=scalar_row)
    await cursor.execute(statement, params)
    return _uuid(await cursor.fetchone())


def _usual_row(message: Mapping[str, Any]) -> _Row | None:
    """The usual message (a topic, a key or none, a JSON payload) as its row, or None for
    any other. The general way's checks and calls were most of enqueue_many()'s own cost
    per message, which a bulk load pays for every row (benchmarks/README.md)."""
    if not (message.keys() <= _USUAL_FIELDS and "topic" in message and "payload" in message):
        return None
    payload = message["payload"]
    if isinstance(payload, _BYTES_LIKE):
        return None
    json_text = orjson.dumps(payload).decode()
    return _Row(message["topic"], message.get("key"), json_text, None, None, None, None, None)


def _rows(messages: Iterable[Mapping[str, Any]]) -> list[_Row]:
    rows = []
    for number, message in enumerate(messages):
        usual = _usual_row(message)
        if usual is not None:
            rows.append(usual)
            continue
        unknown = set(message) - MESSAGE_FIELDS
        if unknown or "topic" not in message or "payload" not in message:
            raise ValueError(
                f"message {number} of enqueue_many must have a topic and a payload and may "
                f"have {', '.join(sorted(MESSAGE_FIELDS - {'topic', 'payload'}))}; "
                f"it has {', '.join(sorted(message))}"
            )
        when = _schedule(message.get("deliver_at"), message.get("delay"))
        rows.append(
            _row(message["topic"], message.get("key"), message["payload"],
                 message.get("headers"), message.get("content_type"), when)
        )  # fmt: skip
    return rows


def _many(schema: str, rows: list[_Row]) -> tuple[bytes, Params]:
    """The statement for ``rows``: one row's own (an array per column costs psycopg more
    to send than a row of values), or one for all with each column an array (None for a
    column unset in every message)."""
    if len(rows) == 1:
        return _statement(schema, rows[0])
    names = ("topics", "keys", "payloads", "payload_bytes", "headers", "content_types",
             "deliver_at", "delays")  # fmt: skip
    columns = map(list, zip(*rows, strict=True))
    params = {
        name: values if any(v is not None for v in values) else None
        for name, values in zip(names, columns, strict=True)
    }
    return _sql("enqueue_messages", schema), params


def enqueue_many(
    conn: psycopg.Connection[Any],
    messages: Iterable[Mapping[str, Any]],
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[UUID]:
    """Add many events in one statement, in ``conn``'s current transaction, in the
    order given; return their ids in that order.

    Each message is a mapping with :func:`enqueue`'s keyword arguments: ``topic`` and
    ``payload``, and optionally ``key``, ``headers``, ``content_type``, ``deliver_at``
    and ``delay``. Messages of one key are published in list order. This is the way to
    write a bulk load: one statement costs the server a fraction of one per message.
    """
    rows = _rows(messages)
    if not rows:
        return []
    statement, params = _many(schema, rows)
    with conn.cursor(row_factory=scalar_row) as cursor:
        return [_uuid(new_id) for new_id in cursor.execute(statement, params).fetchall()]


async def enqueue_many_async(
    conn: psycopg.AsyncConnection[Any],
    messages: Iterable[Mapping[str, Any]],
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[UUID]:
    """The asyncio twin of :func:`enqueue_many`, sharing its SQL."""
    rows = _rows(messages)
    if not rows:
        return []
    statement, params = _many(schema, rows)
    async with conn.cursor(row_factory=scalar_row) as cursor:
        await cursor.execute(statement, params)
        return [_uuid(new_id) for new_id in await cursor.fetchall()]
