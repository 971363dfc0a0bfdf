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
tables and the targets of issue 30). docs/performance.md carries the table of a full run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from benchmarks.payloads import body_pool, event_key
from benchmarks.processes import MachineShare, RelayProcess, log_dir, relay_argv
from benchmarks.stack import Stack, fresh_database, running_stack, wait_until
from benchmarks.writer_ways import BASELINE_SCHEMA, BASELINE_TABLES, Event, Way, ways

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
BASELINE = "plain INSERT"
TOPIC = "writer-cost"
PROFILE_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "track_functions": "all"}
CEILING = "ceiling: every promise, no more"
# Issue 30's targets: (way, style, rows per transaction, goal). Row-by-row ways are held
# against the plain INSERT of their style; bulk ways against both row-by-row styles.
TARGETS: tuple[tuple[str, str, int, float], ...] = (
    ("INSERT INTO outbox.messages", "awaited", 1000, 0.8),
    ("INSERT INTO outbox.messages", "pipelined", 1000, 0.8),
    ("SELECT outbox.enqueue()", "awaited", 1000, 0.5),
    ("SELECT outbox.enqueue()", "pipelined", 1000, 0.5),
    ("relay.enqueue()", "awaited", 1000, 0.8),
    ("relay.enqueue_many()", "bulk", 1000, 1.0),
    ("SELECT outbox.enqueue_many()", "bulk", 1000, 1.0),
)
ONE_ROW_GOAL = 0.85


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = parse_args()
    chosen = [w for w in ways() if not args.ways or any(s in w.name for s in args.ways)]
    meta = _meta(args)
    share = MachineShare()
    share.start()
    settings = PROFILE_SETTINGS if args.profile else None
    with running_stack(["kafka"], pg_settings=settings) as stack:
        dsn = fresh_database(stack.pg)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(BASELINE_TABLES)
        records = measure_rounds(stack, dsn, chosen, args)
        server = _server_profile(dsn) if args.profile else {}
    meta.update(share.stop(), finished_at=_now())
    document = {"meta": meta, "summary": summarize(records), "records": records}
    document["targets"] = targets(document["summary"])
    if server:
        document["server"] = server
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per way and round")
    parser.add_argument("--shapes", default="1000,1", help="rows per transaction")
    parser.add_argument("--relay", choices=("both", "on", "off"), default="both")
    parser.add_argument("--ways", nargs="*", help="only the ways whose name contains one")
    parser.add_argument("--profile", action="store_true", help="pg_stat_statements figures")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="writers")
    return parser.parse_args()


# --- measuring ---------------------------------------------------------------------------


def measure_rounds(
    stack: Stack, dsn: str, chosen: list[Way], args: argparse.Namespace
) -> list[dict[str, Any]]:
    events = _events()
    shapes = [int(s) for s in args.shapes.split(",")]
    phases = {"both": [False, True], "on": [True], "off": [False]}[args.relay]
    records: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        # which phase goes first alternates, so neither always gets the fresher minute
        order = phases if round_no % 2 else phases[::-1]
        for relay_on in order:
            with _relay(stack, dsn, relay_on), psycopg.connect(dsn, autocommit=True) as conn:
                for shape in shapes:
                    # one statement per transaction: pipelined is the awaited way again
                    here = [w for w in chosen if shape > 1 or w.style != "pipelined"]
                    seconds = args.seconds * len(here) * (2 if shape == 1 else 1)
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

    The ways take turns one transaction at a time (the order rotating each turn) for
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
    while time.perf_counter() < deadline:
        shift = turn % len(chosen)
        for way in [*chosen[shift:], *chosen[:shift]]:
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


def _events() -> list[Event]:
    pool = body_pool()
    return [(TOPIC, event_key(pool, n), orjson.loads("{" + body)) for n, body in enumerate(pool)]


def _batches(events: Sequence[Event], size: int) -> Iterator[list[Event]]:
    endless = itertools.cycle(events)
    while True:
        yield list(itertools.islice(endless, size))


class _relay:
    """The installed relay in polling mode, draining into a fresh Tansu topic (or nothing)."""

    def __init__(self, stack: Stack, dsn: str, on: bool) -> None:
        self._stack, self._dsn, self._on = stack, dsn, on
        self._process: RelayProcess | None = None
        self._target: Any = None

    def __enter__(self) -> _relay:
        if self._on:
            self._target = self._stack.target("kafka")
            argv = relay_argv("poll", self._dsn, self._target.relay_args(), [])
            self._process = RelayProcess("writer-cost-relay", argv, log_dir())
            if not wait_until(self._leased, 30):
                raise RuntimeError(f"the relay did not start:\n{self._process.log_tail()}")
        return self

    def _leased(self) -> bool:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM outbox.bucket_leases WHERE expires_at > now()"
            ).fetchone()
        return bool(row and row[0])

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            alive = self._process.alive()
            self._process.stop()
            self._target.close()
            if not alive and exc[0] is None:
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


# --- reporting ---------------------------------------------------------------------------


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median rows/s and CPU, and the median per-round ratio to the plain INSERT of the
    same style (bulk ways: to the awaited one, and in x_plain_pipelined to the other)."""
    base = {
        (r["round"], r["relay"], r["rows_per_tx"], r["style"]): r["rows_per_s"]
        for r in records
        if r["way"] == BASELINE and r["style"] != "bulk"
    }
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["way"], r["style"], r["relay"], r["rows_per_tx"]), []).append(r)
    rows = []
    for (way, style, relay_on, shape), runs in groups.items():
        row = {"way": way, "style": style, "relay": relay_on, "rows_per_tx": shape,
               "baseline": runs[0]["baseline"], "runs": len(runs)}  # fmt: skip
        for name in ("rows_per_s", "server_us_per_row", "client_us_per_row"):
            row[name] = round(statistics.median(r[name] for r in runs), 1)
        against = {"x_plain": "awaited" if style == "bulk" else style}
        if style == "bulk":
            against["x_plain_pipelined"] = "pipelined"
        for field, base_style in against.items():
            ratios = [
                r["rows_per_s"] / b
                for r in runs
                if (b := base.get((r["round"], relay_on, shape, base_style)))
            ]
            row[field] = round(statistics.median(ratios), 2) if ratios else None
        rows.append(row)
    return rows


def _find(summary: list[dict[str, Any]], way: str, style: str, relay: bool, shape: int) -> Any:
    return next(
        (r for r in summary if (r["way"], r["style"], r["relay"], r["rows_per_tx"])
         == (way, style, relay, shape)),
        None,
    )  # fmt: skip


def targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 30's writer targets, each with and without a relay. A row-by-row target
    missed where the ceiling of the same run is below the goal too is out of reach."""
    checks = [(w, s, n, goal) for w, s, n, goal in TARGETS]
    checks += [
        (r["way"], r["style"], 1, ONE_ROW_GOAL)
        for r in summary
        if r["rows_per_tx"] == 1 and not r["relay"] and not r["baseline"]
    ]  # fmt: skip
    found = []
    for (way, style, shape, goal), relay_on in itertools.product(checks, (False, True)):
        row = _find(summary, way, style, relay_on, shape)
        fields = ["x_plain", "x_plain_pipelined"] if style == "bulk" and shape > 1 else ["x_plain"]
        for field in fields:
            if row is None or row.get(field) is None:
                continue
            versus = "pipelined" if field == "x_plain_pipelined" else style
            ceiling = _find(summary, CEILING, versus, relay_on, shape) if style != "bulk" else None
            found.append({
                "target": f"{way} ({style}), {shape:,} rows/tx, "
                          f"{'a relay running' if relay_on else 'no relay'}"
                          + (" vs pipelined" if field == "x_plain_pipelined" else ""),
                "goal": goal, "measured": row[field],
                "ceiling": ceiling["x_plain"] if ceiling else None,
            })  # fmt: skip
    for t in found:
        t["met"] = t["measured"] >= t["goal"]
        t["out_of_reach"] = not t["met"] and t["ceiling"] is not None and t["ceiling"] < t["goal"]
    return found


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        f"# What the outbox costs the writer: {meta['tag']}",
        "",
        f"`{meta['command']}` on {meta['machine']}, {meta['started_at']} to "
        f"{meta.get('finished_at')}; tree {meta['tree']}; cores busy "
        f"{meta.get('machine_busy_pct')} %, stolen {meta.get('machine_steal_pct')} %.",
        "",
        "Rows/s of one writer (median of the rounds) and, in brackets, the median per-round "
        "ratio to the plain INSERT of the same style (bulk ways: to the awaited plain INSERT, "
        "and to the pipelined one after the semicolon).",
        "",
        *_rates_table(document["summary"]),
        "",
        "CPU per row, 1,000 rows per transaction, no relay: the server backend's and the "
        "writer's own (µs, median of the rounds; the scheduler's account, which the rest of "
        "a busy machine disturbs less than the wall clock).",
        "",
        *_cpu_table(document["summary"]),
        "",
        "| target | goal | measured | ceiling, same run | met |",
        "|---|---:|---:|---:|---|",
    ]
    for t in document["targets"]:
        met = "yes" if t["met"] else "out of reach" if t["out_of_reach"] else "**NO**"
        ceiling = "—" if t["ceiling"] is None else f"{t['ceiling']:.2f}x"
        lines.append(f"| {t['target']} | {t['goal']}x | {t['measured']:.2f}x | {ceiling} | {met} |")
    return "\n".join([*lines, *_server_lines(document.get("server"))]) + "\n"


def _ways_in_order(summary: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["way"], r["style"]) for r in summary))


def _rates_table(summary: list[dict[str, Any]]) -> list[str]:
    shapes = sorted({r["rows_per_tx"] for r in summary}, reverse=True)
    cases = [(shape, relay_on) for shape in shapes for relay_on in (False, True)]
    cases = [c for c in cases if any((r["rows_per_tx"], r["relay"]) == c for r in summary)]
    titles = [f"{s:,} rows/tx, {'relay' if r else 'no relay'}" for s, r in cases]
    lines = ["| way | style | " + " | ".join(titles) + " |", "|---|---|" + "---:|" * len(cases)]
    for way, style in _ways_in_order(summary):
        cells = []
        for shape, relay_on in cases:
            row = _find(summary, way, style, relay_on, shape)
            cells.append(
                "—" if row is None else f"{row['rows_per_s']:,.0f} ({row['x_plain']:.2f}x)"
            )
        lines.append(f"| {way} | {style} | " + " | ".join(cells) + " |")
    return lines


def _cell(row: dict[str, Any]) -> str:
    text = f"{row['rows_per_s']:,.0f} ({row['x_plain']:.2f}x"
    if row.get("x_plain_pipelined") is not None:
        text += f"; {row['x_plain_pipelined']:.2f}x pipelined"
    return text + ")"


def _cpu_table(summary: list[dict[str, Any]]) -> list[str]:
    lines = ["| way | style | server µs/row | writer µs/row |", "|---|---|---:|---:|"]
    for way, style in _ways_in_order(summary):
        row = _find(summary, way, style, False, 1000)
        if row is not None:
            server, client = row["server_us_per_row"], row["client_us_per_row"]
            lines.append(f"| {way} | {style} | {server:.1f} | {client:.1f} |")
    return lines


def _server_lines(server: dict[str, Any] | None) -> list[str]:
    if not server:
        return []
    lines = ["", "Server time per call (pg_stat_statements, µs):", ""]
    for query, calls, us in server["statements_us_per_call"]:
        lines.append(f"- {calls:,} x {us} µs: `{query}`")
    for name, calls, own, total in server["functions_self_total_us_per_call"]:
        lines.append(f"- function {name}: {calls:,} calls, self {own} µs, total {total} µs")
    return lines


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
