"""What storing a JSON payload as jsonb or json costs PostgreSQL (no relay, no broker).

    python -m benchmarks.payload_types [--rows 100000] [--rounds 3]

Starts a private PostgreSQL and, for each column type, inserts the benchmark's ~1 KB
events the way the benchmark writers do (``INSERT ... SELECT p::<type> FROM unnest(...)``,
5,000 rows per statement) into an unlogged table (the WAL and its flushes are the same
for both types and would only add noise), then reads every payload back as text on the
server, which is what the claim does for each row it publishes. Prints server
microseconds per row for both: the figures behind migration 0006 (payloads are json).
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from psycopg import sql

from benchmarks.payloads import body_pool, event_text
from benchmarks.stack import start_postgres

TYPES = ("jsonb", "json")
CHUNK = 5000


def _table(kind: str) -> sql.Identifier:
    return sql.Identifier(f"payload_{kind}")


def insert_us_per_row(conn: psycopg.Connection, kind: str, events: list[str]) -> float:
    conn.execute(sql.SQL("TRUNCATE {}").format(_table(kind)))
    insert = sql.SQL("INSERT INTO {} (payload) SELECT p::{} FROM unnest(%b::text[]) p").format(
        _table(kind), sql.Identifier(kind)
    )
    started = time.perf_counter()
    for first in range(0, len(events), CHUNK):
        conn.execute(insert, (events[first : first + CHUNK],))
    return (time.perf_counter() - started) / len(events) * 1e6


def read_us_per_row(conn: psycopg.Connection, kind: str, rows: int) -> float:
    """Every payload turned into text on the server; only the sum travels."""
    read = sql.SQL("SELECT sum(octet_length(payload::text)) FROM {}").format(_table(kind))
    started = time.perf_counter()
    conn.execute(read).fetchone()
    return (time.perf_counter() - started) / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pool = body_pool()
    events = [event_text(pool, n, time.time()) for n in range(args.rows)]
    pg = start_postgres()
    try:
        dsn = pg.create_database("payload_types")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for kind in TYPES:
                create = "CREATE UNLOGGED TABLE {} (seq bigserial PRIMARY KEY, payload {})"
                conn.execute(sql.SQL(create).format(_table(kind), sql.Identifier(kind)))
            figures: dict[str, dict[str, list[float]]] = {
                k: {"insert": [], "read": []} for k in TYPES
            }
            for _ in range(args.rounds):  # interleaved, so drift hits both types alike
                for kind in TYPES:
                    figures[kind]["insert"].append(insert_us_per_row(conn, kind, events))
                    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(_table(kind)))
                    figures[kind]["read"].append(read_us_per_row(conn, kind, args.rows))
            for kind in TYPES:
                insert = statistics.median(figures[kind]["insert"])
                read = statistics.median(figures[kind]["read"])
                print(f"{kind:5}: insert {insert:5.1f} us/row, read as text {read:4.1f} us/row")
    finally:
        pg.__exit__(None, None, None)


if __name__ == "__main__":
    main()
