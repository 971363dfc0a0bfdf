"""What the inbox adds to a consumer's transaction, per message.

    .venv/bin/python benchmarks/inbox_overhead.py [--dsn DSN] [--messages 10000]

Without ``--dsn`` it creates a scratch database on the PostgreSQL at
``host=127.0.0.1 port=5432 user=postgres`` and drops it afterwards. Each scenario runs
``--messages`` transactions that insert one row (the handler's effect), split into
rounds that alternate the scenarios, so drift (checkpoints, autovacuum) hits all alike;
the figure is the median round. Results go to benchmarks/results/inbox_overhead.json.

Commits do not wait for the WAL flush (``synchronous_commit=off`` in the session) unless
you pass ``--synchronous-commit on``: the flush costs the same with or without the inbox
(its row adds about a hundred bytes of WAL) and on a shared disk its jitter would drown
the difference being measured.

Scenarios:
- ``plain``: BEGIN; handler; COMMIT                         (no inbox)
- ``inbox``: Inbox.process on an autocommit connection      (BEGIN; claim; handler; COMMIT)
- ``inbox_nested``: Inbox.process inside the caller's transaction
                                       (BEGIN; SAVEPOINT; claim; handler; RELEASE; COMMIT)
- ``duplicate``: Inbox.process of an id already recorded (what a redelivery costs)
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.inbox import Inbox
from relay.migrations import migrate

SERVER_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
RESULTS = Path(__file__).resolve().parent / "results" / "inbox_overhead.json"
SCHEMA = "bench"
ROUNDS = 20

Conn = psycopg.Connection[Any]


@contextmanager
def scratch_database(server_dsn: str) -> Iterator[str]:
    name = f"inbox_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_dsn, dbname=name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def handler(conn: Conn) -> None:
    conn.execute("INSERT INTO effects (amount) VALUES (5)")


def scenarios(inbox: Inbox) -> dict[str, Callable[[Conn, str], object]]:
    def plain(conn: Conn, _id: str) -> None:
        with conn.transaction():
            handler(conn)

    def with_inbox(conn: Conn, message_id: str) -> None:
        inbox.process(conn, message_id, handler)

    def inbox_nested(conn: Conn, message_id: str) -> None:
        with conn.transaction():
            inbox.process(conn, message_id, handler)

    def duplicate(conn: Conn, _id: str) -> None:
        inbox.process(conn, "already-processed", handler)

    return {
        "plain": plain,
        "inbox": with_inbox,
        "inbox_nested": inbox_nested,
        "duplicate": duplicate,
    }


def run_round(conn: Conn, name: str, step: Callable[[Conn, str], object], count: int) -> float:
    ids = [f"{name}-{secrets.token_hex(8)}" for _ in range(count)]
    started = time.perf_counter()
    for message_id in ids:
        step(conn, message_id)
    return (time.perf_counter() - started) / count * 1e6


def measure(dsn: str, messages: int, synchronous_commit: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,))
        migrate(conn, SCHEMA, tracks=("inbox",))
        conn.execute(
            "CREATE TABLE effects (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " amount integer NOT NULL)"
        )
        inbox = Inbox(consumer="bench", schema=SCHEMA)
        steps = scenarios(inbox)
        inbox.process(conn, "already-processed", handler)
        for name, step in steps.items():  # warm up: prepared statements, caches
            run_round(conn, name, step, 200)
        per_round = max(1, messages // ROUNDS)
        timings: dict[str, list[float]] = {name: [] for name in steps}
        for round_number in range(ROUNDS):
            order = list(steps.items())
            if round_number % 2:
                order.reverse()
            for name, step in order:
                timings[name].append(run_round(conn, name, step, per_round))
        settings = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
            for name in ("server_version", "synchronous_commit", "fsync")
        }
    median = {name: round(statistics.median(values), 1) for name, values in timings.items()}
    return {
        "benchmark": "inbox_overhead",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages_per_scenario": per_round * ROUNDS,
        "rounds": ROUNDS,
        "us_per_message_median": median,
        "overhead_us_per_message": {
            "own_transaction": round(median["inbox"] - median["plain"], 1),
            "inside_caller_transaction": round(median["inbox_nested"] - median["plain"], 1),
        },
        "us_per_message_rounds": {k: [round(v, 1) for v in vs] for k, vs in timings.items()},
        "postgres": settings,
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "connection": "one autocommit connection over loopback TCP, one process",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="database to use (default: a scratch database)")
    parser.add_argument(
        "--server-dsn", default=SERVER_DSN, help="where to create the scratch database"
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="off",
        help="off (default) leaves the disk flush out of the figures",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.dsn:
        report = measure(args.dsn, args.messages, args.synchronous_commit)
    else:
        with scratch_database(args.server_dsn) as dsn:
            report = measure(dsn, args.messages, args.synchronous_commit)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    median, overhead = report["us_per_message_median"], report["overhead_us_per_message"]
    print(f"µs/message (median of {ROUNDS} rounds): {median}")
    print(f"inbox overhead: {overhead}  ->  {args.output}")


if __name__ == "__main__":
    main()
