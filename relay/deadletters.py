"""``outbox-relay dead-letters list|show|retry|drop``: look after the dead-letter table.

A message lands in ``<schema>.dead_letters`` when the broker refused it for good or it
used up ``--max-attempts``. With ``--on-poison block`` its key is held meanwhile, so the
key's later messages wait in the outbox. ``retry`` puts messages back with their
original sequence numbers (so they go out before what waited behind them) and releases
the key; ``drop`` deletes them and releases the key too. Bulk operations work in chunks,
each its own transaction, with a progress bar on a terminal.

The main CLI mounts the sub-app with its own error guard and connect function::

    app.add_typer(build_dead_letters_app(clear_errors, _connect), name="dead-letters")
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import orjson
import psycopg
from psycopg.rows import dict_row

from relay.sqlfiles import query

F = TypeVar("F", bound=Callable[..., Any])
Guard = Callable[[F], F]

SQL_FILE = "dead_letters.sql"
CHUNK = 500
LIST_LIMIT = 100
MAX_LIST_LIMIT = 100_000  # rows held in memory and printed at once


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operation applies to; ``None`` fields match everything."""

    topic: str | None = None
    key: str | None = None
    older_than: float | None = None
    newer_than: float | None = None
    ids: list[UUID] | None = None

    @property
    def narrowed(self) -> bool:
        return any(
            v is not None
            for v in (self.topic, self.key, self.older_than, self.newer_than, self.ids)
        )

    def params(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "key": self.key,
            "older_than": self.older_than,
            "newer_than": self.newer_than,
            "ids": self.ids,
        }


def _q(name: str, schema: str) -> Any:
    return query(name, schema, SQL_FILE)


def list_dead_letters(
    conn: psycopg.Connection[Any], schema: str, selection: Selection, limit: int = LIST_LIMIT
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_q("list", schema), {**selection.params(), "limit": limit}).fetchall()
    return [_summary(row) for row in rows]


def count_dead_letters(conn: psycopg.Connection[Any], schema: str, selection: Selection) -> int:
    row = conn.execute(_q("count", schema), selection.params()).fetchone()
    return int(row[0]) if row else 0


def show_dead_letter(
    conn: psycopg.Connection[Any], schema: str, message_id: UUID
) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_q("show", schema), {"id": message_id}).fetchone()
    if row is None:
        return None
    payload = row["payload"]
    binary = row["payload_bytes"]
    return {
        **_summary(row),
        "content_type": row["content_type"],
        "headers": row["headers"],
        "payload": payload,
        "payload_base64": None if binary is None else _base64(bytes(binary)),
        "key_held": row["key_held"],
    }


def retry_dead_letters(conn: psycopg.Connection[Any], schema: str, seqs: Sequence[int]) -> int:
    """Put ``seqs`` back into the outbox and release their keys; one transaction."""
    return _move(conn, schema, "retry", seqs)


def drop_dead_letters(conn: psycopg.Connection[Any], schema: str, seqs: Sequence[int]) -> int:
    """Delete ``seqs`` for good and release their keys; one transaction."""
    return _move(conn, schema, "drop", seqs)


def _move(conn: psycopg.Connection[Any], schema: str, name: str, seqs: Sequence[int]) -> int:
    with conn.transaction():
        keys = [row[0] for row in conn.execute(_q(name, schema), {"seqs": list(seqs)})]
        held = sorted({k for k in keys if k is not None})
        if held:
            conn.execute(_q("release_keys", schema), {"keys": held})
    return len(keys)


def selected_seqs(
    conn: psycopg.Connection[Any], schema: str, selection: Selection
) -> Iterator[list[int]]:
    """The selected dead letters' seqs in chunks, oldest first, read before any change."""
    with conn.cursor() as cur:
        params = {**selection.params(), "limit": None}
        seqs = [row[0] for row in cur.execute(_q("list", schema), params)]
    for start in range(0, len(seqs), CHUNK):
        yield seqs[start : start + CHUNK]


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "seq": row["seq"],
        "topic": row["topic"],
        "key": row["key"],
        "attempts": row["attempts"],
        "reason": row["reason"],
        "last_error": row["last_error"],
        "created_at": _iso(row["created_at"]),
        "dead_at": _iso(row["dead_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def format_list(rows: Sequence[dict[str, Any]], total: int) -> str:
    if not rows:
        return "no dead letters match"
    lines = [f"{'id':<36}  {'topic':<24} {'key':<16} {'tries':>5}  {'dead at':<19}  error"]
    for row in rows:
        error = (row["last_error"] or row["reason"]).replace("\n", " ")[:60]
        lines.append(
            f"{row['id']:<36}  {row['topic'][:24]:<24} {str(row['key'])[:16]:<16} "
            f"{row['attempts']:>5}  {(row['dead_at'] or '')[:19]:<19}  {error}"
        )
    if total > len(rows):
        lines.append(f"... {total - len(rows)} more (use --limit, or narrow with filters)")
    return "\n".join(lines)


def format_one(letter: dict[str, Any]) -> str:
    payload = letter["payload"]
    body = (
        orjson.dumps(payload).decode()
        if letter["payload_base64"] is None
        else f"(binary, base64) {letter['payload_base64']}"
    )
    held = "  (held: its later messages wait)" if letter["key_held"] else ""
    return "\n".join(
        [
            f"id:          {letter['id']}",
            f"topic:       {letter['topic']}",
            f"key:         {letter['key']}{held}",
            f"reason:      {letter['reason']} after {letter['attempts']} attempt(s)",
            f"last error:  {letter['last_error']}",
            f"created at:  {letter['created_at']}",
            f"dead since:  {letter['dead_at']}",
            f"headers:     {orjson.dumps(letter['headers']).decode()}",
            f"content:     {letter['content_type']}",
            f"payload:     {body}",
        ]
    )
