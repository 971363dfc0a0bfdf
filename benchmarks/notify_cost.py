"""What the outbox trigger's NOTIFY costs the application's writers (no relay running).

    python -m benchmarks.notify_cost [--seconds 8]

NOTIFY takes a database-wide lock at commit and holds it through the WAL flush, so
notifying transactions commit one at a time. This starts a private PostgreSQL
(``fsync=on``, like the main suite), then runs the benchmark writers flat out
(``synchronous_commit=on``) twice per shape: once with a listening polling relay
registered (every insert notifies) and once with that relay marked busy (migration 0004:
writers skip the NOTIFY). Prints rows/s for each.
"""

from __future__ import annotations

import argparse
import time

import psycopg

from benchmarks.stack import fresh_database, start_postgres
from benchmarks.writers import Writers

SHAPES = ((4, 10), (8, 10), (8, 1))  # (writer processes, rows per transaction)
REGISTER = (
    "INSERT INTO outbox.relays (relay_id, name, mode, expires_at) "
    "VALUES (gen_random_uuid(), 'notify-cost', 'poll', now() + interval '1 day')"
)


def rows_per_second(dsn: str, writers: int, rows: int, seconds: float) -> float:
    running = Writers(dsn, "notify-cost", rate=1_000_000, count=writers, rows_per_tx=rows)
    running.start()
    time.sleep(1.5)  # connections made, caches warm
    before, started = running.committed(), time.monotonic()
    time.sleep(seconds)
    rate = (running.committed() - before) / (time.monotonic() - started)
    running.stop()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    pg = start_postgres()
    try:
        dsn = fresh_database(pg)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(REGISTER)
            for writers, rows in SHAPES:
                figures = []
                for listening in (True, False):
                    conn.execute("UPDATE outbox.relays SET listening = %s", (listening,))
                    conn.execute("TRUNCATE outbox.messages")
                    figures.append(rows_per_second(dsn, writers, rows, args.seconds))
                print(
                    f"{writers} writers x {rows} rows/tx: with NOTIFY {figures[0]:,.0f} rows/s, "
                    f"without {figures[1]:,.0f} rows/s ({figures[1] / figures[0]:.2f}x)",
                    flush=True,
                )
    finally:
        pg.__exit__(None, None, None)


if __name__ == "__main__":
    main()
