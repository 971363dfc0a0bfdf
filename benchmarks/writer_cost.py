"""What the outbox costs the application's writes: ``python -m benchmarks.writer_cost``.

    python -m benchmarks.writer_cost                 # 5 rounds, ~15 minutes
    python -m benchmarks.writer_cost --rounds 2 --seconds 1   # a quick look
    python -m benchmarks.writer_cost --profile       # also pg_stat_statements figures

Starts a private PostgreSQL (fsync on, ``synchronous_commit=on``) and one writer (this
process, one connection) that writes ~1 KB JSON events over 100 keys, every way of
benchmarks/writer_ways.py, in transactions of 1,000 rows and of 1 row, once with no relay
and once with the installed ``outbox-relay run`` (polling mode) draining the outbox into
a private Tansu broker. The ways take turns one transaction at a time for ``--seconds``
each (1-row transactions twice as long), so a slow minute of this shared machine falls
on all of them alike; a way's ratio is its rows/s over the plain INSERT's of the same
round and style, and the median over rounds is reported. A target the outbox misses is
"out of reach" when the ceiling of the same run (a table keeping every promise of the
outbox and nothing more) misses it too.

Results: ``benchmarks/results/<tag>.json`` (every measurement) and ``<tag>.md`` (the
tables and the targets of issue 30). This is the focused command: ``python -m
benchmarks.run`` runs the same workload (``writer_workload``) as one of the suite's, and
docs/performance.md carries the table and the targets of a full suite run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg

from benchmarks.payloads import body_pool, event_key
from benchmarks.processes import MachineShare, RelayProcess, log_dir, relay_argv
from benchmarks.stack import Stack, drop_database, fresh_database, running_stack, wait_until
from benchmarks.writer_report import markdown, summarize, targets, update_docs
from benchmarks.writer_ways import BASELINE_SCHEMA, BASELINE_TABLES, Event, Way, ways

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TOPIC = "writer-cost"
PROFILE_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "track_functions": "all"}


@dataclass(frozen=True)
class WriterPlan:
    """How much of the writer workload to run: rounds, seconds per way and round, the
    transaction sizes, which relay phases, and the ways (substrings of their names)."""

    rounds: int = 5
    seconds: float = 2.0
    shapes: tuple[int, ...] = (1000, 1)
    relay: str = "both"  # both, on or off
    ways: tuple[str, ...] = ()  # empty: every way


def writer_workload(stack: Stack, plan: WriterPlan, *, profile: bool = False) -> dict[str, Any]:
    """The writer workload on a running stack (its PostgreSQL and Kafka), in a database of
    its own that is dropped afterwards: ``{"measurements": [...], "started_at": ...,
    "finished_at": ...}`` (and ``"server"`` figures with ``profile``, which needs
    PROFILE_SETTINGS in the cluster)."""
    chosen = [w for w in ways() if not plan.ways or any(s in w.name for s in plan.ways)]
    result: dict[str, Any] = {"started_at": _now()}
    dsn = fresh_database(stack.pg)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(BASELINE_TABLES)
        result["measurements"] = measure_rounds(stack, dsn, chosen, plan)
        if profile:
            result["server"] = _server_profile(dsn)
    finally:
        drop_database(stack.pg, dsn)
    return {**result, "finished_at": _now()}


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = parse_args()
    plan = WriterPlan(
        rounds=args.rounds,
        seconds=args.seconds,
        shapes=tuple(int(s) for s in args.shapes.split(",")),
        relay=args.relay,
        ways=tuple(args.ways or ()),
    )
    meta = _meta(args)
    share = MachineShare()
    share.start()
    settings = PROFILE_SETTINGS if args.profile else None
    with running_stack(["kafka"], pg_settings=settings) as stack:
        result = writer_workload(stack, plan, profile=args.profile)
    meta.update(share.stop(), finished_at=_now())
    records = result["measurements"]
    document = {"meta": meta, "summary": summarize(records), "records": records}
    document["targets"] = targets(document["summary"])
    if result.get("server"):
        document["server"] = result["server"]
    args.output.mkdir(parents=True, exist_ok=True)
    written = {
        ".json": orjson.dumps(document, option=orjson.OPT_INDENT_2),
        ".md": markdown(document).encode(),
    }
    for suffix, body in written.items():
        path = args.output / f"{args.tag}{suffix}"
        path.write_bytes(body)
        print(f"wrote {path}")
    print(markdown(document))
    if args.update_docs:
        update_docs(args.update_docs, document)
        print(f"updated {args.update_docs}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=WriterPlan.rounds)
    parser.add_argument(
        "--seconds", type=float, default=WriterPlan.seconds, help="per way and round"
    )
    parser.add_argument("--shapes", default="1000,1", help="rows per transaction")
    parser.add_argument("--relay", choices=("both", "on", "off"), default="both")
    parser.add_argument("--ways", nargs="*", help="only the ways whose name contains one")
    parser.add_argument("--profile", action="store_true", help="pg_stat_statements figures")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="writers")
    parser.add_argument(
        "--update-docs",
        type=Path,
        metavar="MD",
        help="write the run's table into this file (docs/performance.md) between its markers",
    )
    return parser.parse_args()


# --- measuring ---------------------------------------------------------------------------


def measure_rounds(
    stack: Stack, dsn: str, chosen: list[Way], plan: WriterPlan
) -> list[dict[str, Any]]:
    phases = {"both": [False, True], "on": [True], "off": [False]}[plan.relay]
    records: list[dict[str, Any]] = []
    for round_no in range(1, plan.rounds + 1):
        # which phase goes first alternates, so neither always gets the fresher minute
        order = phases if round_no % 2 else phases[::-1]
        for relay_on in order:
            with (
                _relay(stack, dsn, relay_on) as phase,
                psycopg.connect(dsn, autocommit=True) as conn,
            ):
                events = _events(phase.topic)
                for shape in plan.shapes:
                    # one statement per transaction: pipelined is the awaited way again
                    here = [w for w in chosen if shape > 1 or w.style != "pipelined"]
                    seconds = plan.seconds * len(here) * (2 if shape == 1 else 1)
                    rates = measure(conn, here, shape, seconds, events, truncate=not relay_on)
                    case = {"round": round_no, "relay": relay_on, "rows_per_tx": shape}
                    for way, figures in rates.items():
                        records.append(
                            {**case, "way": way.name, "style": way.style,
                             "baseline": way.baseline, **figures}
                        )  # fmt: skip
                    _progress(case, rates)
    return records


def _progress(case: dict[str, Any], rates: dict[Way, dict[str, float]]) -> None:
    shown = ", ".join(f"{w.name} {w.style} {r['rows_per_s']:,.0f}" for w, r in rates.items())
    print(f"[{time.strftime('%H:%M:%S')}] {case}: {shown}", flush=True)


def measure(
    conn: psycopg.Connection[Any],
    chosen: Sequence[Way],
    rows_per_tx: int,
    seconds: float,
    events: Sequence[Event],
    *,
    truncate: bool,
) -> dict[Way, dict[str, float]]:
    """Rows per second each way commits in transactions of ``rows_per_tx`` rows.

    The ways take turns one transaction at a time (in a new order each turn) for
    ``seconds`` in all, so a burst of load from elsewhere on the machine falls on all of
    them alike; each way's rate is its rows over the time its own transactions took.
    """
    tables = [f"{BASELINE_SCHEMA}.{t}" for t in ("plain", "tutorial", "promises")]
    if truncate:
        tables.append("outbox.messages")
    conn.execute(f"TRUNCATE {', '.join(tables)}")
    batches = _batches(events, rows_per_tx)
    for way in chosen:
        for _ in range(max(1, 10 // rows_per_tx)):  # prepared statements, caches, pages
            with conn.transaction():
                way.write(conn, next(batches))
    backend = conn.info.backend_pid
    spent = {way: [0.0, 0, 0] for way in chosen}  # wall seconds, server ns, client ns
    deadline = time.perf_counter() + seconds
    turn = 0
    shuffled = turn_orders(chosen, seed=rows_per_tx)
    while time.perf_counter() < deadline:
        for way in next(shuffled):
            batch = next(batches)
            server, client, started = _cpu_ns(backend), time.thread_time_ns(), time.perf_counter()
            with conn.transaction():
                way.write(conn, batch)
            totals = spent[way]
            totals[0] += time.perf_counter() - started
            totals[1] += _cpu_ns(backend) - server
            totals[2] += time.thread_time_ns() - client
        turn += 1
    rows = turn * rows_per_tx
    return {way: _figures(rows, *totals) for way, totals in spent.items()}


def turn_orders(chosen: Sequence[T], *, seed: int) -> Iterator[list[T]]:
    """The order of each turn: shuffled anew, the same for the same seed.

    With a relay running, a way's transaction is drained while the next way writes: the
    drain's CPU falls on whichever way comes next. In a fixed rotation each way nearly
    always follows the same way, so the ways into the outbox (listed together) took
    each other's drains while the baselines took almost none. Shuffled, every way follows
    every other alike, and the drains fall on all of them as a slow minute does."""
    rng = random.Random(seed)
    while True:
        order = list(chosen)
        rng.shuffle(order)
        yield order


def _figures(rows: int, wall: float, server_ns: float, client_ns: float) -> dict[str, float]:
    return {
        "rows_per_s": round(rows / wall, 1),
        "server_us_per_row": round(server_ns / rows / 1e3, 2),
        "client_us_per_row": round(client_ns / rows / 1e3, 2),
    }


def _cpu_ns(pid: int) -> int:
    """Nanoseconds a process has run on a CPU so far (the scheduler's own account, exact
    where /proc/PID/stat counts 10 ms ticks): the server's cost of a way, which the other
    work on a shared machine slows far less than it slows the wall clock."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _events(topic: str) -> list[Event]:
    pool = body_pool()
    return [(topic, event_key(pool, n), orjson.loads("{" + body)) for n, body in enumerate(pool)]


def _batches(events: Sequence[Event], size: int) -> Iterator[list[Event]]:
    endless = itertools.cycle(events)
    while True:
        yield list(itertools.islice(endless, size))


class _relay:
    """The installed relay in polling mode, draining into a fresh Tansu topic (or nothing).
    ``topic`` is where the phase's events go: the fresh topic, or a name no relay reads."""

    def __init__(self, stack: Stack, dsn: str, on: bool) -> None:
        self._stack, self._dsn, self._on = stack, dsn, on
        self._process: RelayProcess | None = None
        self._target: Any = None
        self.topic = TOPIC

    def __enter__(self) -> _relay:
        if self._on:
            self._target = self._stack.target("kafka")
            self.topic = self._target.topic
            argv = relay_argv("poll", self._dsn, self._target.relay_args(), [])
            self._process = RelayProcess("writer-cost-relay", argv, log_dir())
            if not wait_until(self._leased, 30):
                tail = self._process.log_tail()
                self._stop()  # no __exit__ follows a failed __enter__
                raise RuntimeError(f"the relay did not start:\n{tail}")
        return self

    def _leased(self) -> bool:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM outbox.bucket_leases WHERE expires_at > now()"
            ).fetchone()
        return bool(row and row[0])

    def _stop(self) -> bool:
        """Stop the relay and drop its topic; whether it was still running."""
        if self._process is None:
            return True
        alive = self._process.alive()
        self._process.stop()
        self._target.close()
        return alive

    def __exit__(self, *exc: object) -> None:
        if not self._stop() and exc[0] is None:
            assert self._process is not None
            raise RuntimeError(f"the relay exited:\n{self._process.log_tail()}")


def _server_profile(dsn: str) -> dict[str, Any]:
    """Server time per statement and per function (needs --profile's settings)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        statements = conn.execute(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 100), calls,"
            " round((mean_exec_time * 1000)::numeric, 1)::float8"
            " FROM pg_stat_statements WHERE calls >= 1000 ORDER BY calls DESC LIMIT 25"
        ).fetchall()
        functions = conn.execute(
            "SELECT funcname, calls, round((self_time / calls * 1000)::numeric, 2)::float8,"
            " round((total_time / calls * 1000)::numeric, 2)::float8"
            " FROM pg_stat_user_functions WHERE calls > 0 ORDER BY calls DESC"
        ).fetchall()
    return {
        "statements_us_per_call": [list(r) for r in statements],
        "functions_self_total_us_per_call": [list(r) for r in functions],
    }


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "relay", "schema", "benchmarks")
    return {
        "tag": args.tag,
        "command": "python -m benchmarks.writer_cost " + " ".join(sys.argv[1:]),
        "started_at": _now(),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}",
        "tree": git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else ""),
        "loadavg_at_start": os.getloadavg(),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    main()
