"""The ceiling of a drain: what PostgreSQL alone claims and marks, with no broker.

N events are preloaded (as for a drain), then one connection in this process claims them
1,000 at a time in transactions of ``SELECT ... FOR UPDATE SKIP LOCKED`` (the columns a
relay needs, the payload as text) and either marks them with one
``UPDATE ... WHERE seq = ANY(...)`` or deletes them with one ``DELETE``, then commits.
Nothing is published. msg/s counts from the first statement to the last commit: no relay
that claims from and acknowledges to this table can drain faster on the same machine,
so every drain of the same invocation is reported as a fraction of it.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from benchmarks.stack import Stack, drop_database, fresh_database
from benchmarks.writers import preload

CLAIM = (
    "SELECT seq, id::text, topic, key, payload::text FROM outbox.messages"
    " WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED"
)
ACKNOWLEDGE = {
    "update": "UPDATE outbox.messages SET sent_at = now() WHERE seq = ANY(%s)",
    "delete": "DELETE FROM outbox.messages WHERE seq = ANY(%s)",
}
# The kinds of the ceiling's records, by how it acknowledges; "update" is the one every
# drain is held against (the tutorial relay marks, as most relays do).
KINDS = {"update": "pg-claim+update", "delete": "pg-claim+delete"}
CLAIM_SIZE = 1000


def claim_and_acknowledge(dsn: str, how: str, batch: int = CLAIM_SIZE) -> tuple[int, float]:
    """Claim and acknowledge until nothing is left; (rows, seconds)."""
    rows = 0
    with psycopg.connect(dsn) as conn:
        started = time.monotonic()
        while True:
            with conn.transaction():
                claimed = conn.execute(CLAIM, (batch,), prepare=True).fetchall()
                if claimed:
                    conn.execute(ACKNOWLEDGE[how], ([r[0] for r in claimed],), prepare=True)
            if not claimed:
                return rows, time.monotonic() - started
            rows += len(claimed)


def pg_ceiling(stack: Stack, *, messages: int, how: str) -> dict[str, Any]:
    """One run of the ceiling on a fresh database of ``messages`` preloaded events."""
    dsn = fresh_database(stack.pg)
    try:
        preload_seconds = preload(dsn, "ceiling", messages)
        rows, seconds = claim_and_acknowledge(dsn, how)
    finally:
        drop_database(stack.pg, dsn)
    return {
        "messages": messages,
        "delivered": rows,
        "complete": rows >= messages,
        "msg_per_s": round(rows / seconds),
        "msg_per_s_from_start": round(rows / seconds),
        "seconds_to_all_confirmed": round(seconds, 3),
        "claim_size": CLAIM_SIZE,
        "preload_seconds": round(preload_seconds, 2),
    }


def run_ceilings(
    stack: Stack, *, runs: int, messages: int, record: Any, first_run: int = 1
) -> None:
    """Both ceilings, ``runs`` times each, taking turns; ``record(workload, case, run,
    measure)`` is the suite's (benchmarks.run)."""
    from benchmarks.workloads import Case

    for run in range(first_run, first_run + runs):
        for how, kind in KINDS.items():
            record(
                "ceiling", Case(kind, "none", "none"), run,
                lambda how=how: pg_ceiling(stack, messages=messages, how=how),
            )  # fmt: skip
