"""``outbox-relay status``: the backlog and the relays, read from the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.cdc.status import format_cdc_status
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


def sample_scheduled(
    conn: psycopg.Connection[Any], schema: str, cap: int = COUNT_CAP
) -> dict[str, Any]:
    """Delayed messages not yet in the outbox (counted up to ``cap``) and when the next
    one is due: an ISO time, and seconds from now by the database's clock (negative
    while a due one waits for a relay to move it)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("status_scheduled", schema), {"cap": cap}).fetchone() or {}
    return {
        "scheduled": row.get("scheduled", 0),
        "next_due_at": _iso(row.get("next_due")),
        "next_due_in_seconds": row.get("next_due_in"),
    }


def collect_status(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    require_schema(conn, schema)
    backlog = sample_backlog(conn, schema)
    scheduled = sample_scheduled(conn, schema)
    with conn.cursor(row_factory=dict_row) as cur:
        relays = cur.execute(query("status_relays", schema)).fetchall()
    return {"schema": schema, **backlog, **scheduled, "relays": [_relay(row) for row in relays]}


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


def _next_due(status: dict[str, Any]) -> str:
    due_in = status.get("next_due_in_seconds")
    if due_in is None:
        return ""
    when = f"in {due_in:.1f}s" if due_in >= 0 else f"{-due_in:.1f}s ago, not yet moved"
    return f" (next due {status['next_due_at']}, {when})"


def format_status(status: dict[str, Any]) -> str:
    age = status["oldest_pending_age_seconds"]
    scheduled = _count(status.get("scheduled", 0), status["counts_stop_at"])
    lines = [
        f"outbox schema:       {status['schema']}",
        f"pending messages:    {_count(status['pending'], status['counts_stop_at'])}",
        f"oldest pending age:  {'-' if age is None else f'{age:.1f}s'}",
        f"scheduled messages:  {scheduled}{_next_due(status)}",
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


# What ``status`` adds up across several outboxes.
_TOTALLED = ("pending", "dead_letters", "scheduled")


def status_totals(shown: list[dict[str, Any]]) -> dict[str, Any]:
    """The sums across the outboxes shown, and how many could not be read. An outbox's
    counts stop at ``counts_stop_at``, so a total that took a stopped count is at least that."""
    read = [status for status in shown if "error" not in status]
    totals: dict[str, Any] = {"outboxes": len(shown), "failed": len(shown) - len(read)}
    for name in _TOTALLED:
        totals[name] = sum(status.get(name, 0) for status in read)
    totals["counts_stop_at"] = COUNT_CAP
    return totals


def format_many_status(shown: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    """One block per outbox, headed by its database and schema, then the totals."""
    blocks = [_format_one(status) for status in shown]
    stopped = [name for name in _TOTALLED if any(s.get(name, 0) >= COUNT_CAP for s in shown)]

    def total(name: str) -> str:
        return f"at least {totals[name]}" if name in stopped else str(totals[name])

    failed = f", {totals['failed']} not read" if totals["failed"] else ""
    blocks.append(
        "\n".join(
            [
                f"== totals: {totals['outboxes']} outboxes{failed} ==",
                f"pending messages:    {total('pending')}",
                f"parked messages:     {total('dead_letters')} in the dead letters",
                f"scheduled messages:  {total('scheduled')}",
            ]
        )
    )
    return "\n".join(blocks)


def _format_one(status: dict[str, Any]) -> str:
    schema = status["schema"] if status["schema"] is not None else status.get("schema_pattern")
    header = f"== {status['database']}/{schema} =="
    if "error" in status:
        return f"{header}\nerror: {status['error']}"
    cdc = "\n" + format_cdc_status(status["cdc"]) if "cdc" in status else ""
    return f"{header}\n{format_status(status)}{cdc}"
