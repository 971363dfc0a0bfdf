"""Write events into the outbox from Python, inside the caller's own transaction.

The SQL functions ``<schema>.enqueue`` / ``enqueue_binary`` are the contract for every
language. From Python these helpers insert the row themselves, with the same columns and
defaults: calling the function would cost the server a second executor for every row.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import orjson
import psycopg

from relay.config import DEFAULT_SCHEMA, is_plain_identifier
from relay.errors import ConfigError
from relay.sqlfiles import query

JsonValue = Any
JSON = "application/json"


@functools.cache
def _sql(name: str, schema: str) -> bytes:
    """A statement as bytes, rendered once per schema: psycopg would otherwise compose
    the identifier into the text again on every call."""
    if not is_plain_identifier(schema):
        raise ConfigError(f"the schema name {schema!r} is not a plain identifier")
    return query(name, schema).as_bytes(None)


def _statement(
    schema: str,
    topic: str,
    key: str | None,
    payload: JsonValue | bytes,
    headers: Mapping[str, str] | None,
    content_type: str | None,
) -> tuple[bytes, dict[str, Any]]:
    params: dict[str, Any] = {"topic": topic, "key": key}
    if isinstance(payload, bytes | bytearray | memoryview):
        params.update(payload=None, payload_bytes=bytes(payload))
        params["content_type"] = content_type or "application/octet-stream"
    else:
        if content_type not in (None, JSON):
            raise ValueError("JSON payloads are sent as application/json; pass bytes for others")
        params["payload"] = orjson.dumps(payload).decode()
        if not headers:
            return _sql("enqueue_json", schema), params
        params.update(payload_bytes=None, content_type=JSON)
    params["headers"] = orjson.dumps(dict(headers or {})).decode()
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
    schema: str = DEFAULT_SCHEMA,
) -> UUID:
    """Add one event to the outbox in ``conn``'s current transaction; return its id.

    ``payload`` is any JSON-serializable value (stored and published as orjson's compact
    text) or bytes (published byte for byte with ``content_type``). Messages with the
    same ``key`` are published in commit order; ``key=None`` means no ordering
    requirement.
    """
    statement, params = _statement(schema, topic, key, payload, headers, content_type)
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return _uuid(row[0])


async def enqueue_async(
    conn: psycopg.AsyncConnection[Any],
    *,
    topic: str,
    key: str | None,
    payload: JsonValue | bytes,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> UUID:
    """The asyncio twin of :func:`enqueue`, sharing its SQL."""
    statement, params = _statement(schema, topic, key, payload, headers, content_type)
    cursor = await conn.execute(statement, params)
    row = await cursor.fetchone()
    assert row is not None
    return _uuid(row[0])
