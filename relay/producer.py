"""Write events into the outbox from Python, inside the caller's own transaction.

The SQL functions ``<schema>.enqueue`` / ``enqueue_binary`` are the contract for every
language; these helpers are thin wrappers around them for psycopg users.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import orjson
import psycopg

from relay.config import DEFAULT_SCHEMA
from relay.names import check_schema_name
from relay.sqlfiles import query

JsonValue = Any


def _statement(
    schema: str,
    topic: str,
    key: str | None,
    payload: JsonValue | bytes,
    headers: Mapping[str, str] | None,
    content_type: str | None,
) -> tuple[Any, dict[str, Any]]:
    check_schema_name(schema)
    params: dict[str, Any] = {
        "topic": topic,
        "key": key,
        "headers": orjson.dumps(dict(headers or {})).decode(),
    }
    if isinstance(payload, bytes | bytearray | memoryview):
        params["payload"] = bytes(payload)
        params["content_type"] = content_type or "application/octet-stream"
        return query("enqueue_binary", schema), params
    if content_type not in (None, "application/json"):
        raise ValueError("JSON payloads are sent as application/json; pass bytes for others")
    params["payload"] = orjson.dumps(payload).decode()
    return query("enqueue_json", schema), params


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
    return UUID(str(row[0]))


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
    return UUID(str(row[0]))
