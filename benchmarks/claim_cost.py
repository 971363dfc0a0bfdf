"""What one claim costs the relay's process: rows in text or in binary (no broker).

    python -m benchmarks.claim_cost [--backlog 100000] [--rounds 40]

Starts a private PostgreSQL, preloads the benchmark's ~1 KB events, and runs the relay's
claim (500 rows of one lane's buckets, the relay's row factory, rolled back each time so
every round claims the same rows) with the result rows in text and in binary format,
interleaved. Prints the median wall time per claim and the CPU this process spent on it
(sending, receiving, loading rows into messages): the figures behind the binary claim's result rows
(relay/outbox_rows.py). ``text`` is the claim as it was before, with Python loaders
for json and jsonb.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import orjson
import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader

from benchmarks.stack import fresh_database, start_postgres
from benchmarks.writers import preload
from relay.db import INDEX_PLAN_SETTINGS
from relay.outbox_rows import message_row, register_claim_loaders
from relay.sqlfiles import query

BATCH = 500


class _JsonText(Loader):
    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class _JsonbObject(Loader):
    def load(self, data: Buffer) -> Any:
        return orjson.loads(data)


def _text_loaders(adapters: AdaptersMap) -> None:
    """The claim's loaders before it went binary."""
    adapters.register_loader("json", _JsonText)
    adapters.register_loader("jsonb", _JsonbObject)


FORMATS = {"text": (False, _text_loaders), "binary": (True, register_claim_loaders)}


def claim_once(conn: psycopg.Connection, fmt: str) -> tuple[float, float, int]:
    """One claim, rolled back: wall seconds, this process's CPU seconds, rows."""
    binary, register = FORMATS[fmt]
    params = {"buckets": list(range(0, 256, 2)), "limit": BATCH}
    with conn.cursor(row_factory=message_row, binary=binary) as cursor:
        register(cursor.adapters)
        conn.execute("BEGIN")
        wall, cpu = time.perf_counter(), time.process_time()
        cursor.execute(query("claim_batch", "outbox"), params, prepare=True)
        rows = cursor.fetchall()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        conn.execute("ROLLBACK")
    return wall, cpu, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    pg = start_postgres()
    try:
        dsn = fresh_database(pg)
        preload(dsn, "bench", args.backlog)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name, value in {**INDEX_PLAN_SETTINGS, "timezone": "UTC"}.items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            conn.execute("VACUUM ANALYZE outbox.messages")
            figures: dict[str, list[tuple[float, float, int]]] = {f: [] for f in FORMATS}
            for _ in range(args.rounds):  # interleaved, so drift hits both formats alike
                for fmt in FORMATS:
                    figures[fmt].append(claim_once(conn, fmt))
        for fmt, runs in figures.items():
            rows = runs[0][2]
            wall = statistics.median(run[0] for run in runs) / rows * 1e6
            cpu = statistics.median(run[1] for run in runs) / rows * 1e6
            print(f"{fmt:6}: {rows} rows per claim, wall {wall:5.2f} us/row, CPU {cpu:5.2f} us/row")
    finally:
        pg.__exit__(None, None, None)


if __name__ == "__main__":
    main()
