"""Where a drain spends its time: per stage, per statement, per thread, per function.

    python -m benchmarks.profile_drain [--messages 100000] [--batch-size N]
        [--mode poll|cdc] [--claim-lanes N] [--retention 1h|0] [--cprofile out.prof]
        [--relay-source DIR]

Runs ``RelayService`` in this process (so it can be timed from inside) against a private
PostgreSQL with ``pg_stat_statements`` and a Tansu broker, after preloading a backlog:

- stages: wall time inside the claim query, ``connector.publish`` and the acknowledgement
  statements, per message; the rest of each batch cycle (BEGIN/COMMIT, Python between
  stages, waiting) is what is left of the drain's wall time;
- statements: ``pg_stat_statements`` (server time per call, rows, per message);
- functions: ``--cprofile`` writes a cProfile of the whole drain and prints the top.

``--mode cdc`` replays the backlog from the slot (created before the preload, so the
rows come through the WAL as after an outage); its stages are only ``connector.publish``.

``--relay-source DIR`` imports ``relay`` and ``connectors`` from DIR instead: a patched
scratch copy, to measure an idea without touching the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import functools
import pstats
import resource
import sys
import time
from collections import defaultdict
from typing import Any


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, help="default: the relay's default")
    parser.add_argument("--retention", default=None, help="default: the relay's default")
    parser.add_argument("--claim-lanes", type=int, help="default: the relay's default")
    parser.add_argument("--mode", choices=("poll", "cdc"), default="poll")
    parser.add_argument("--cprofile", help="write a cProfile of the drain to this file")
    parser.add_argument("--relay-source", help="import relay/ and connectors/ from here")
    parser.add_argument("--kafka-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a librdkafka property for the relay's producer (repeatable)")
    return parser.parse_args()


class StageClock:
    """Wall time spent inside wrapped coroutines, by stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, method: Any) -> Any:
        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed


TOP_STATEMENTS = """
SELECT calls, total_exec_time, rows, shared_blks_hit + shared_blks_read AS blocks,
       regexp_replace(left(query, 90), '\\s+', ' ', 'g')
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT 12
"""


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, by name (librdkafka names its
    own threads; Python threads are named from ``threading``)."""
    import os
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                data = stat.read()
        except OSError:  # the thread ended
            continue
        fields = data[data.rindex(")") + 2 :].split()
        name = names.get(int(tid)) or data[data.index("(") + 1 : data.rindex(")")]
        seconds[name] += (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def box_cpu(services: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of this process, of each service with its children, idle, and
    stolen by the hypervisor (time this virtual machine wanted and did not get)."""
    import os

    from benchmarks.processes import machine_idle, machine_steal, tree_cpu, usage

    seconds = {"relay (this process)": usage(os.getpid()).cpu_seconds}
    seconds.update({name: tree_cpu(pid) for name, pid in services.items()})
    seconds["idle (both cores)"] = machine_idle()
    seconds["stolen (hypervisor)"] = machine_steal()
    return seconds


def tune_like_the_relay_process() -> None:
    """What ``outbox-relay run`` does to the garbage collector once the relay is built
    (nothing in trees from before ``tune_garbage_collector``)."""
    import relay.service

    tune = getattr(relay.service, "tune_garbage_collector", None)
    if tune is not None:
        tune()


def relay_source(service: Any) -> Any:
    """The service's source; trees from before ``relay.source`` held its parts themselves
    (``pollers``, ``poll_stats``, ``cdc``)."""
    source = getattr(service, "source", None)
    if source is not None:
        return source
    return service.cdc if service.cdc is not None else service


def source_stats(service: Any) -> Any:
    source = relay_source(service)
    return getattr(source, "stats", None) or service.poll_stats


async def drain(config: Any, messages: int, clock: StageClock, services: dict[str, int]) -> float:
    from relay.service import RelayService

    service = RelayService(config)
    tune_like_the_relay_process()
    for poller in getattr(relay_source(service), "pollers", []):
        poller._claim = clock.wrap("claim query", poller._claim)
        # Trees before 2026-12-04 acknowledge, then COMMIT apart; later ones in one query.
        name = (
            "_acknowledge_and_commit"
            if hasattr(poller, "_acknowledge_and_commit")
            else "_acknowledge"
        )
        setattr(poller, name, clock.wrap("acknowledge", getattr(poller, name)))
    service.connector.publish = clock.wrap("connector.publish", service.connector.publish)
    task = asyncio.create_task(service.run())
    stats = source_stats(service)
    while not stats.batches:
        await asyncio.sleep(0.001)
    started, threads_before = time.perf_counter(), thread_cpu()
    box_before = box_cpu(services)
    while stats.published < messages:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    threads_after, box_after = thread_cpu(), box_cpu(services)
    print("\nthe machine's CPU per message during the drain, by process (with its children):")
    for name, after in box_after.items():
        print(f"  {name:28s} {(after - box_before[name]) / messages * 1e6:8.1f} µs")
    print("\nrelay CPU per message during the drain, by thread:")
    for name, after in sorted(threads_after.items(), key=lambda item: -item[1]):
        used = after - threads_before.get(name, 0.0)
        if used > 0:
            print(f"  {name:28s} {used / messages * 1e6:8.1f} µs")
    service.request_stop()
    await task
    return elapsed


async def create_the_slot(config: Any) -> None:
    """Stream once, so the slot exists before the backlog is written."""
    from relay.service import RelayService

    service = RelayService(config)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(relay_source(service).streaming.wait(), 60)
    service.request_stop()
    await task


def main() -> None:
    args = parse_args()
    if args.relay_source:
        sys.path.insert(0, args.relay_source)
    import psycopg

    import relay
    from benchmarks.stack import KafkaTarget, fresh_database, running_stack, service_pids
    from benchmarks.writers import preload
    from relay.config import RelayConfig
    from relay.durations import parse_duration

    print(f"relay imported from {relay.__file__}")
    settings = {"shared_preload_libraries": "pg_stat_statements", "track_io_timing": "on"}
    with running_stack(["kafka"], pg_settings=settings) as stack:
        dsn = fresh_database(stack.pg)
        target = KafkaTarget(stack.kafka_bootstrap or "")
        fields = {f.name for f in dataclasses.fields(RelayConfig)}
        options: dict[str, Any] = {"metrics_port": 0} if "metrics_port" in fields else {}
        if args.retention:
            options["retention"] = parse_duration(args.retention, "retention")
        if args.claim_lanes:
            options["claim_lanes"] = args.claim_lanes
        if args.batch_size:
            options["batch_size"] = args.batch_size
        kafka_options = dict(o.split("=", 1) for o in args.kafka_option or [])
        if "connector_options" in fields:  # connectors parse their own settings
            options["connector_options"] = {"bootstrap.servers": target.bootstrap,
                                            **kafka_options}
        else:  # a relay from before that (profiling an older commit)
            options.update(kafka_bootstrap=target.bootstrap, kafka_options=kafka_options)
        config = RelayConfig(dsn=dsn, mode=args.mode, connector="kafka", **options)
        if args.mode == "cdc":
            asyncio.run(create_the_slot(config))
        preload(dsn, target.topic, args.messages)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute("CHECKPOINT")
            conn.execute("SELECT pg_stat_statements_reset()")
        clock = StageClock()
        profiler = cProfile.Profile() if args.cprofile else None
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        if profiler:
            profiler.enable()
        services = service_pids(stack)
        elapsed = asyncio.run(drain(config, args.messages, clock, services))
        if profiler:
            profiler.disable()
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
            cpu_after.ru_stime - cpu_before.ru_stime
        )
        args.batch_size = config.batch_size  # what ran, for the report
        report(args, clock, elapsed, cpu, dsn)
        target.close()
    if profiler:
        profiler.dump_stats(args.cprofile)
        pstats.Stats(args.cprofile).sort_stats("tottime").print_stats(25)


def report(
    args: argparse.Namespace, clock: StageClock, elapsed: float, cpu: float, dsn: str
) -> None:
    import psycopg

    n = args.messages
    print(
        f"\n{n:,} messages in {elapsed:.2f} s: {n / elapsed:,.0f} msg/s; relay process CPU "
        f"{cpu / n * 1e6:.1f} µs/msg (incl. startup, {cpu:.2f} s)"
    )
    print(f"batches: {clock.calls['claim query']:,} (batch size {args.batch_size})")
    print("\nwall time per message, by stage (lanes overlap, so stages may add up to more):")
    accounted = 0.0
    for name, seconds in clock.seconds.items():
        accounted += seconds
        print(f"  {name:28s} {seconds / n * 1e6:8.1f} µs  ({seconds / elapsed:5.1%})")
    rest = max(0.0, elapsed - accounted)
    print(f"  {'rest (BEGIN/COMMIT, loop)':28s} {rest / n * 1e6:8.1f} µs  ({rest / elapsed:5.1%})")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(TOP_STATEMENTS).fetchall()
    print("\npg_stat_statements (server execution time):")
    print(f"  {'calls':>7} {'total ms':>9} {'ms/call':>8} {'µs/msg':>7} {'rows':>8}  query")
    for calls, total, count, _blocks, text in rows:
        print(
            f"  {calls:7d} {total:9.0f} {total / max(calls, 1):8.2f} "
            f"{total * 1000 / n:7.1f} {count:8d}  {text}"
        )


if __name__ == "__main__":
    main()
