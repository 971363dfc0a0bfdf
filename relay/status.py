"""``outbox-relay status``: the backlog and the relays, read from the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.migrations import require_schema
from relay.sqlfiles import query

# Where the pending and sent-last-minute counts stop: beyond it the oldest pending age,
# not the count, says how far behind the relay is.
COUNT_CAP = 100_000


def sample_backlog(
    conn: psycopg.Connection[Any], schema: str, cap: int = COUNT_CAP
) -> dict[str, Any]:
    """The cheap figures (partial indexes only): pending, oldest age, dead letters, held
    keys, sent in the last minute. The metrics sampler reads these every few seconds.
    The counts stop at ``cap``."""
    with conn.cursor(row_factory=dict_row) as cur:
        backlog = cur.execute(query("status_backlog", schema), {"cap": cap}).fetchone() or {}
        held = cur.execute(query("held_keys", schema)).fetchone() or {}
    return {
        "pending": backlog.get("pending", 0),
        "oldest_pending_age_seconds": backlog.get("oldest_age"),
        "parked": backlog.get("parked", 0),
        "dead_letters": backlog.get("parked", 0),
        "sent_last_minute": backlog.get("sent_last_minute", 0),
        "held_keys": next(iter(held.values()), 0),
        "counts_stop_at": cap,
    }


def collect_status(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    require_schema(conn, schema)
    backlog = sample_backlog(conn, schema)
    with conn.cursor(row_factory=dict_row) as cur:
        relays = cur.execute(query("status_relays", schema)).fetchall()
    return {"schema": schema, **backlog, "relays": [_relay(row) for row in relays]}


def _relay(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "relay_id": str(row["relay_id"]),
        "name": row["name"],
        "mode": row["mode"],
        "alive": row["alive"],
        "started_at": _iso(row["started_at"]),
        "heartbeat_at": _iso(row["heartbeat_at"]),
        "published": row["published"],
        "buckets": list(row["buckets"]),
    }


def _count(value: int, cap: int) -> str:
    return f"at least {value}" if value >= cap else str(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def format_status(status: dict[str, Any]) -> str:
    age = status["oldest_pending_age_seconds"]
    lines = [
        f"outbox schema:       {status['schema']}",
        f"pending messages:    {_count(status['pending'], status['counts_stop_at'])}",
        f"oldest pending age:  {'-' if age is None else f'{age:.1f}s'}",
        f"parked messages:     {status['parked']} in the dead letters"
        + (" (outbox-relay dead-letters list)" if status["parked"] else ""),
        f"held keys:           {status['held_keys']}",
        f"sent last minute:    {_count(status['sent_last_minute'], status['counts_stop_at'])}"
        " kept"
        + ("" if status["sent_last_minute"] else " (with --retention 0 sent rows are deleted)"),
        f"relays:              {sum(1 for r in status['relays'] if r['alive'])} alive",
    ]
    for relay in status["relays"]:
        state = "alive" if relay["alive"] else "gone "
        lines.append(
            f"  {state} {relay['name']:<32} {relay['mode']:<5} "
            f"{len(relay['buckets']):>3} buckets  {relay['published']} published"
        )
    return "\n".join(lines)
