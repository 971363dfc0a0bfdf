"""Many outboxes in one relay process (issue 31's Performance section), in one invocation.

One database gets ``--schemas`` tenant schemas (``tenant_000`` ...), each with an outbox
migrated in. Then, against a private PostgreSQL and Tansu (benchmarks.stack):

1. *fleet*: one ``outbox-relay run --schema-pattern 'tenant_%'`` process. Once settled
   (every tenant holds a live lease and the relay's PostgreSQL connections stopped
   changing), it is left idle for a window: its CPU as a share of one core, its
   connections (``pg_stat_activity`` rows whose ``application_name`` starts with
   ``outbox-relay``), its VmRSS. Then writer processes commit one-row transactions at
   ``--rate`` msg/s in total, spread evenly over the first ``--busy`` tenants, and the
   relay's CPU per message delivered is taken over a window.
2. *single*: the same, for a relay of ``--schema tenant_000`` alone, with the whole rate
   going into that one outbox.

CPU per message is the relay's utime + stime (/proc/PID/stat) over the window divided by
the messages a plain consumer (``assign()``) received in it; after each traffic window
every committed event must reach the consumer. The writers are the same in both cases
(one connection each, ``synchronous_commit=on``, paced by deadline as in
benchmarks/light.py): one per 500 msg/s, each taking the busy tenants round-robin.

Each window also splits PostgreSQL's CPU by ``application_name`` (one backend per
connection) and counts the database's transactions, so a cost that lands in PostgreSQL
rather than in the relay shows. The cluster's ``max_connections`` is raised
(``--max-connections``) so that a relay holding connections per outbox can still be
measured: 200 outboxes of a few connections each do not fit in PostgreSQL's default 100.
"""

from __future__ import annotations

import argparse
import array
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from benchmarks.light import WRITER_NUMBERS, WRITER_RATE
from benchmarks.many_outboxes_pg import (
    backend_cpu,
    cpu_by_name,
    relay_connections,
    schemas_with_leases,
    transactions,
)
from benchmarks.many_outboxes_report import PATTERN, SHORT_OF_RATE, markdown, verdicts
from benchmarks.payloads import body_pool, event_key, event_text
from benchmarks.processes import (
    MachineShare,
    RelayProcess,
    log_dir,
    relay_argv,
    tree_cpu,
)
from benchmarks.stack import Stack, running_stack, service_pids, wait_until
from benchmarks.writers import WriterProcess, write_commit_log
from relay.migrations import migrate
from tests.support.services import free_port


def tenant(i: int) -> str:
    return f"tenant_{i:03d}"


# --- setup ---------------------------------------------------------------------------------


def make_tenants(pg_dsn: str, schemas: int) -> tuple[str, float]:
    """A fresh database with ``schemas`` migrated outboxes; its DSN and the seconds taken."""
    started = time.monotonic()
    dsn = _create_database(pg_dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(schemas):
            migrate(conn, tenant(i))
    return dsn, time.monotonic() - started


def _create_database(pg_dsn: str) -> str:
    name = f"many_{os.getpid()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return pg_dsn.rpartition("/")[0] + "/" + name


def drop_slots(dsn: str) -> None:
    """The benchmark database's replication slots (the relay stopped: none is active)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                     " WHERE database = current_database()")


def settle(dsn: str, relay: RelayProcess, schemas: list[str], settings: Settings) -> float:
    """Wait until every schema has a live lease (polling: a bucket's; CDC: the slot's)
    and the relay's connection count held still for 5 s; return the seconds it took."""
    timeout, mode = settings.settle_timeout, settings.mode
    started = time.monotonic()
    last, since = -1, time.monotonic()
    while time.monotonic() - started < timeout:
        if not relay.alive():
            raise RuntimeError(f"the relay exited:\n{relay.log_tail()}")
        count = sum(relay_connections(dsn).values())
        if count != last:
            last, since = count, time.monotonic()
        leased = schemas_with_leases(dsn, schemas, mode)
        if count and (leased is None or leased == len(schemas)) and time.monotonic() - since >= 5:
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError(
        f"not settled in {timeout:.0f}s: {last} connections, "
        f"{schemas_with_leases(dsn, schemas, mode)} of {len(schemas)} schemas leased\n"
        f"{relay.log_tail()}"
    )


# --- writers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterSpec:
    dsn: str
    schemas: tuple[str, ...]  # taken round-robin, one row per transaction
    topic: str
    rate: float
    first_n: int
    commit_log: str


def _write(spec: WriterSpec, committed: Any, stopping: Any) -> None:
    inserts = [
        sql.SQL("INSERT INTO {}.messages (topic, key, payload) VALUES (%s, %s, %s::json)")
        .format(sql.Identifier(s))
        for s in spec.schemas
    ]  # fmt: skip
    pool, n = body_pool(), spec.first_n
    numbers, times = array.array("q"), array.array("d")
    with psycopg.connect(spec.dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        next_at = time.monotonic()
        while not stopping.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += 1 / spec.rate
            insert = inserts[n % len(inserts)]
            value = event_text(pool, n, time.time())
            conn.execute(insert, (spec.topic, event_key(pool, n), value), prepare=True)
            numbers.append(n)
            times.append(time.time())
            committed.value += 1
            n += 1
    write_commit_log(spec.commit_log, numbers, times)


def writer_specs(
    dsn: str, busy: list[str], topic: str, rate: float, first_n: int, logs: Path
) -> list[WriterSpec]:
    count = max(1, math.ceil(rate / WRITER_RATE))
    return [
        WriterSpec(
            dsn, tuple(busy[w::count]) or (busy[0],), topic, rate / count,
            first_n + w * WRITER_NUMBERS, str(logs / f"many-commits-{os.getpid()}-{first_n}-{w}"),
        )
        for w in range(count)
    ]  # fmt: skip


# --- one case: a relay, idle then under traffic --------------------------------------------


@dataclass(frozen=True)
class Settings:
    idle_seconds: float
    window: float
    warmup: float
    rate: float
    settle_timeout: float
    mode: str = "poll"


class Arrivals:
    """What the plain consumer received: every event number, and how many."""

    def __init__(self) -> None:
        self.numbers: set[int] = set()

    def __call__(self, value: bytes, _at: float) -> None:
        self.numbers.add(orjson.loads(value)["n"])


@dataclass
class Bench:
    """What every case of one invocation shares."""

    stack: Stack
    dsn: str
    settings: Settings
    logs: Path
    arrivals: Arrivals
    topic: str
    next_n: int = 0  # the first event number of the next writers: every event is unique

    def writers(self, busy: list[str], rate: float) -> list[WriterSpec]:
        specs = writer_specs(self.dsn, busy, self.topic, rate, self.next_n, self.logs)
        self.next_n += len(specs) * WRITER_NUMBERS
        return specs


def run_case(
    bench: Bench, name: str, schemas: list[str], busy: list[str], rates: list[float],
    extra: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Start the relay, settle, an idle window, a traffic window at each rate; stop it."""
    stack, dsn = bench.stack, bench.dsn
    target_args = ["--connector", "kafka", "--kafka-bootstrap", stack.kafka_bootstrap or ""]
    argv = relay_argv(bench.settings.mode, dsn, target_args, extra, free_port())
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv[1:])}", flush=True)
    relay = RelayProcess(f"many-{name}", argv, bench.logs)
    pg_pid = service_pids(stack)["ThrowawayPostgres"]
    try:
        settled = settle(dsn, relay, schemas, bench.settings)
        print(f"  settled in {settled:.1f}s; idle ...", flush=True)
        figures: dict[str, Any] = {"case": name, "outboxes": len(schemas), "settle_s": settled}
        figures["idle"] = idle_window(dsn, relay, pg_pid, bench.settings.idle_seconds)
        print(f"  idle: {figures['idle']}", flush=True)
        figures["traffic"] = []
        for rate in rates:
            window = traffic_window(
                dsn, relay, pg_pid, bench.writers(busy, rate), bench.settings, bench.arrivals
            )
            figures["traffic"].append({"offered_rate": round(rate, 1), **window})
            print(f"  traffic: {figures['traffic'][-1]}", flush=True)
        figures["vm_hwm_mb"] = round(relay.usage().hwm_mb, 1)
        figures["threads"] = _threads(relay.pid)
        return figures
    finally:
        relay.stop()


def idle_window(dsn: str, relay: RelayProcess, pg_pid: int, seconds: float) -> dict[str, Any]:
    share = MachineShare()
    share.start()
    backends_a, xacts_a = backend_cpu(dsn), transactions(dsn)
    a, pg_a, t_a = relay.usage(), tree_cpu(pg_pid), time.monotonic()
    time.sleep(seconds)
    b, pg_b, t_b = relay.usage(), tree_cpu(pg_pid), time.monotonic()
    backends_b, xacts_b = backend_cpu(dsn), transactions(dsn)
    if not relay.alive():
        raise RuntimeError(f"the relay exited:\n{relay.log_tail()}")
    connections = relay_connections(dsn)
    elapsed = t_b - t_a
    return {
        "seconds": round(elapsed, 1),
        "relay_cpu_pct_of_core": round((b.cpu_seconds - a.cpu_seconds) / elapsed * 100, 2),
        "postgres_cpu_pct_of_core": round((pg_b - pg_a) / elapsed * 100, 2),
        "postgres_cpu_by_name": cpu_by_name(backends_a, backends_b, elapsed),
        "pg_transactions_per_s": round((xacts_b - xacts_a) / elapsed, 1),
        "pg_connections": sum(connections.values()),
        "pg_connections_by_name": connections,
        "vm_rss_mb": round(b.rss_mb, 1),
        "load_average": load_average(),
        **share.stop(),
    }


def traffic_window(
    dsn: str, relay: RelayProcess, pg_pid: int, specs: list[WriterSpec], settings: Settings,
    arrivals: Arrivals,
) -> dict[str, Any]:  # fmt: skip
    writers = [WriterProcess(_write, spec, "a writer") for spec in specs]
    committed: set[int] = set()
    share = MachineShare()
    try:
        wait_until(lambda: all(w.committed() > 0 for w in writers), 30)
        time.sleep(settings.warmup)
        share.start()
        writes_a = sum(w.committed() for w in writers)
        backends_a, xacts_a = backend_cpu(dsn), transactions(dsn)
        got_a, a, pg_a = len(arrivals.numbers), relay.usage(), tree_cpu(pg_pid)
        t_a = time.monotonic()
        time.sleep(settings.window)
        got_b, b, pg_b = len(arrivals.numbers), relay.usage(), tree_cpu(pg_pid)
        t_b = time.monotonic()
        backends_b, xacts_b = backend_cpu(dsn), transactions(dsn)
        writes_b = sum(w.committed() for w in writers)
        connections = relay_connections(dsn)
    finally:
        for writer in writers:
            committed.update(writer.stop())
    machine = share.stop()
    complete = wait_until(lambda: committed <= arrivals.numbers, 60, 0.2)
    elapsed, delivered = t_b - t_a, got_b - got_a
    cpu = b.cpu_seconds - a.cpu_seconds
    return {
        "seconds": round(elapsed, 1),
        "writers": len(writers),
        "achieved_write_rate": round((writes_b - writes_a) / elapsed, 1),
        "delivered_in_window": delivered,
        "delivered_rate": round(delivered / elapsed, 1),
        "cpu_us_per_msg": round(cpu / delivered * 1e6, 1) if delivered else None,
        "relay_cpu_pct_of_core": round(cpu / elapsed * 100, 2),
        "postgres_cpu_pct_of_core": round((pg_b - pg_a) / elapsed * 100, 2),
        "postgres_cpu_by_name": cpu_by_name(backends_a, backends_b, elapsed),
        "pg_transactions_per_s": round((xacts_b - xacts_a) / elapsed, 1),
        "committed": len(committed),
        "missing_after_60s": len(committed - arrivals.numbers) if not complete else 0,
        "all_delivered": complete,
        "pg_connections": sum(connections.values()),
        "vm_rss_mb": round(b.rss_mb, 1),
        "load_average": load_average(),
        **machine,
    }


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _threads(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


# --- the whole invocation ------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--schemas", type=int, default=200)
    parser.add_argument("--busy", type=int, default=10, help="tenants that get traffic")
    parser.add_argument("--rate", type=float, default=1000.0, help="msg/s in total")
    parser.add_argument("--rounds", type=int, default=1, help="fleet, then single, N times")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds under traffic")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument(
        "--max-connections", type=int, default=0,
        help="the cluster's max_connections (default: 10 per schema + 100)",
    )  # fmt: skip
    parser.add_argument("--mode", choices=("poll", "cdc"), default="poll")
    parser.add_argument("--relay-arg", action="append", default=[], help="passed to run")
    parser.add_argument(
        "--idle-only", action="store_true",
        help="the idle windows only, no traffic (what the idle cost's levers change)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON here, markdown next to it")
    args = parser.parse_args()
    if not 1 <= args.busy <= args.schemas:
        parser.error("--busy must be between 1 and --schemas")
    rate = 0.0 if args.idle_only else args.rate
    settings = Settings(
        args.idle_seconds, args.window, args.warmup, rate, args.settle_timeout, args.mode
    )
    max_connections = args.max_connections or 10 * args.schemas + 100
    result = run(args.schemas, args.busy, args.rounds, settings, max_connections, args.relay_arg)
    text = markdown(result)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M")
    out = args.out or Path("benchmarks/results") / f"many-outboxes-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    out.with_suffix(".md").write_text(text)
    print(f"written: {out} and {out.with_suffix('.md')}")


def run(
    schemas: int, busy: int, rounds: int, settings: Settings, max_connections: int,
    extra: list[str],
) -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "schemas": schemas,
        "busy": busy,
        "rate": settings.rate,
        "settings": settings.__dict__,
        "max_connections": max_connections,
        "load_average_at_start": load_average(),
        "cpus": os.cpu_count(),
        "rounds": [],
    }
    with running_stack(["kafka"], pg_settings={"max_connections": str(max_connections)}) as stack:
        dsn, took = make_tenants(stack.pg.dsn, schemas)
        print(f"{schemas} schemas migrated in {took:.1f}s", flush=True)
        result["migrate_s"] = round(took, 1)
        target = stack.target("kafka")
        arrivals = Arrivals()
        target.start_reader(arrivals)
        bench = Bench(stack, dsn, settings, log_dir(), arrivals, target.topic)
        try:
            for _ in range(rounds):
                result["rounds"].append(one_round(bench, schemas, busy, extra))
        finally:
            target.close()
        result["logs"] = str(bench.logs)
    result["verdicts"] = verdicts(result["rounds"])
    return result


def one_round(bench: Bench, schemas: int, busy: int, extra: list[str]) -> dict[str, Any]:
    """The fleet, then one outbox at the same rate, and, when the fleet's writers fell
    short of it, one outbox again at the rate they reached (CPU per message falls as the
    rate rises, so only equal rates compare)."""
    names, rate = [tenant(i) for i in range(schemas)], bench.settings.rate
    pattern = ["--schema-pattern", PATTERN, *extra]
    fleet = run_case(bench, "fleet", names, names[:busy], [rate] if rate else [], pattern)
    reached = fleet["traffic"][0]["achieved_write_rate"] if rate else 0.0
    rates = [] if not rate else [rate] if reached >= SHORT_OF_RATE * rate else [rate, reached]
    if bench.settings.mode == "cdc":
        drop_slots(bench.dsn)  # the single relay makes its own, after its own publication
    single = run_case(bench, "single", names[:1], names[:1], rates, ["--schema", names[0], *extra])
    return {"fleet": fleet, "single": single}


if __name__ == "__main__":
    main()
