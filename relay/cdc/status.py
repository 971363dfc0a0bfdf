"""``cdc_status``: the slot, its lag, and which relay streams it, for ``outbox-relay status``."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.cdc.queries import cdc_query
from relay.cdc.settings import NAME_PREFIX


def cdc_status(
    conn: psycopg.Connection[Any], schema: str, slot: str | None = None
) -> dict[str, Any]:
    """The CDC figures of ``schema``'s slot (default ``outbox_relay_<schema>``).

    ``lag_bytes`` is ``pg_current_wal_lsn() - confirmed_flush_lsn``: WAL written since
    the relay last confirmed. ``retained_bytes`` (from ``restart_lsn``) is what the slot
    keeps on disk.
    """
    slot_name = slot or f"{NAME_PREFIX}{schema}"
    with conn.cursor(row_factory=dict_row) as cursor:
        found = cursor.execute(cdc_query("slot_status", schema), {"slot": slot_name}).fetchone()
        state = cursor.execute(cdc_query("state", schema), {"slot": slot_name}).fetchone()
    state = state or {}
    return {
        "slot": slot_name,
        "exists": found is not None,
        "active": bool(found and found["active_pid"] is not None),
        "wal_status": found["wal_status"] if found else None,
        "confirmed_flush_lsn": found["confirmed_flush"] if found else None,
        "restart_lsn": found["restart"] if found else None,
        "lag_bytes": found["lag_bytes"] if found else None,
        "retained_bytes": found["retained_bytes"] if found else None,
        "relay_confirmed_lsn": state.get("confirmed_lsn"),
        "snapshot_done": state.get("snapshot_done"),
        "leader": state.get("leader_name") if state.get("leader_alive") else None,
    }


def slot_lag(conn: psycopg.Connection[Any], schema: str, slot: str) -> dict[str, Any]:
    """What the metrics sampler shows of a slot: its name and its lag (None: no slot).
    One statement, where ``cdc_status`` also reads the outbox's ``cdc_state``."""
    with conn.cursor(row_factory=dict_row) as cursor:
        found = cursor.execute(cdc_query("slot_status", schema), {"slot": slot}).fetchone()
    return {"slot": slot, "lag_bytes": found["lag_bytes"] if found else None}


def format_cdc_status(status: dict[str, Any]) -> str:
    if not status["exists"]:
        return f"cdc slot:            {status['slot']} (missing)"
    lag = status["lag_bytes"]
    return "\n".join([
        f"cdc slot:            {status['slot']} ({'active' if status['active'] else 'idle'}, "
        f"wal_status {status['wal_status']})",
        f"cdc lag:             {'-' if lag is None else _size(lag)} of WAL not yet confirmed",
        f"cdc retained WAL:    {_size(status['retained_bytes'] or 0)}",
        f"cdc leader:          {status['leader'] or 'none'}",
    ])


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
