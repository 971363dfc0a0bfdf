"""The soak: writers at a steady rate for minutes, to show whether anything decays.

With the default retention (0: a confirmed row is deleted) every message leaves a dead
row and a dead entry in the partial pending index, at the write rate; autovacuum has to
keep up, and the claim's plan must stay an index walk while it catches up. Each window
reports the relay's rate, the backlog, CPU per message, RSS, the table's size and dead
tuples, and the relay's own commit -> broker confirm latency (from its
``outbox_relay_commit_to_confirm_seconds`` histogram: quantiles are bucket upper bounds).
No consumer reads the topic: Tansu's in-memory fetch slows down as a topic grows into the
millions, and the consumer would measure that instead of the relay.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.processes import CONFIRM_HISTOGRAM, histogram_quantiles
from benchmarks.stack import Stack
from benchmarks.workloads import Case, Session, wait_until
from benchmarks.writers import Writers

TABLE_STATS = """
SELECT pg_total_relation_size('outbox.messages'),
       pg_relation_size('outbox.messages_pending'),
       n_dead_tup, n_live_tup, autovacuum_count
FROM pg_stat_user_tables WHERE relid = 'outbox.messages'::regclass
"""


def soak(
    stack: Stack,
    case: Case,
    logs: Path,
    *,
    rate: float,
    seconds: float,
    windows: int,
    writers: int,
    rows_per_tx: int,
    extra: list[str],
) -> dict[str, Any]:
    session = Session(stack, case, logs, extra)
    rows: list[dict[str, Any]] = []
    try:
        session.start_relay()
        session.wait_ready()
        pool = Writers(
            session.dsn, session.target.topic, rate=rate, count=writers, rows_per_tx=rows_per_tx
        )
        pool.start()
        wait_until(lambda: pool.committed() > 0, 30)
        with psycopg.connect(session.dsn, autocommit=True) as conn:
            before = session.sample(pool.committed())
            histogram_before = session.histogram(CONFIRM_HISTOGRAM)
            started = before.t
            for index in range(windows):
                time.sleep(max(0.0, started + (index + 1) * seconds / windows - time.monotonic()))
                session.check_alive()
                after = session.sample(pool.committed())
                histogram = session.histogram(CONFIRM_HISTOGRAM)
                quantiles = histogram_quantiles(histogram_before, histogram)
                rows.append(_window(conn, started, before, after, quantiles))
                before, histogram_before = after, histogram
        pool.stop()
    finally:
        session.close()
    first, last = rows[0], rows[-1]
    return {
        "rate": rate,
        "seconds": seconds,
        "windows": rows,
        "relay_rate_first_last": [first["relay_rate"], last["relay_rate"]],
        "backlog_first_last": [first["backlog"], last["backlog"]],
        "confirm_p99_ms_at_most_first_last": [
            first["confirm_p99_ms_at_most"],
            last["confirm_p99_ms_at_most"],
        ],
        "cpu_us_first_last": [first["cpu_us_per_msg"], last["cpu_us_per_msg"]],
        "rss_mb_first_last": [first["rss_mb"], last["rss_mb"]],
        "peak_rss_mb": round(session.hwm_mb, 1),
    }


def _window(
    conn: psycopg.Connection[Any], start: float, a: Any, b: Any, quantiles: dict[str, Any]
) -> dict[str, Any]:
    size, pending_index, dead, live, vacuums = conn.execute(TABLE_STATS).fetchone() or (0,) * 5
    delivered = b.delivered - a.delivered
    return {
        "at_s": round(b.t - start, 1),
        "write_rate": round((b.committed - a.committed) / (b.t - a.t)),
        "relay_rate": round(delivered / (b.t - a.t)),
        "backlog": b.committed - b.delivered,
        "cpu_us_per_msg": round((b.cpu - a.cpu) / delivered * 1e6, 1) if delivered else None,
        "rss_mb": round(b.rss, 1),
        "table_mb": round(size / 2**20, 1),
        "pending_index_mb": round(pending_index / 2**20, 2),
        "dead_tuples": dead,
        "live_tuples": live,
        "autovacuums": vacuums,
        "confirm_p50_ms_at_most": quantiles["p50_ms"],
        "confirm_p99_ms_at_most": quantiles["p99_ms"],
    }
