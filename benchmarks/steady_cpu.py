"""What the polling relay costs at a steady, low rate: CPU per message and per batch.

    python -m benchmarks.steady_cpu [--rate 1000] [--seconds 20] [--writers 2]
        [--relay-source DIR]

Runs ``RelayService`` in this process against a private PostgreSQL (with
``pg_stat_statements``) and a Tansu broker while writer processes commit one-row
transactions at ``--rate``, so every commit sends a NOTIFY. Prints the relay's CPU per
message and per batch, by thread, the statements it ran per message, and from its own
histograms a message's age at the broker's confirm next to each batch's publish time
(the rest is the wait before its batch is claimed and published). At low rates
the fixed cost of each batch (wake-up, statements, publish) dominates, not the per-row
work that ``profile_drain`` measures. ``--relay-source DIR`` imports ``relay`` and
``connectors`` from DIR, to compare two trees in interleaved runs (the machine drifts).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="commits per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--writers", type=int, default=2, help="writer processes")
    parser.add_argument("--relay-source", help="import relay/ and connectors/ from here")
    return parser.parse_args()


def prefer_relay_source(source: Path) -> None:
    """Import ``relay`` and ``connectors`` (only those) from ``source``: the writer
    processes inherit the path and must still find this tree's ``benchmarks``."""
    shadow = Path(tempfile.mkdtemp(prefix="relay-source-"))
    for package in ("relay", "connectors"):
        (shadow / package).symlink_to((source / package).resolve())
    sys.path.insert(0, str(shadow))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(config: Any, pool: Any, seconds: float) -> int:
    from benchmarks.profile_drain import thread_cpu, tune_like_the_relay_process
    from relay.service import RelayService

    service = RelayService(config)
    tune_like_the_relay_process()
    task = asyncio.create_task(service.run())
    pool.start()
    await asyncio.sleep(5)  # leases taken, writers at their rate
    stats = service.source.stats if hasattr(service, "source") else service.poll_stats
    published, batches = stats.published, stats.batches
    histograms = latency_histograms(service)
    threads, cpu = thread_cpu(), cpu_seconds()
    await asyncio.sleep(seconds)
    cpu = cpu_seconds() - cpu
    latencies = latency_histograms(service)
    messages, batches = stats.published - published, stats.batches - batches
    print(f"{messages:,} messages in {seconds:g} s, {batches:,} batches "
          f"({messages / max(batches, 1):.1f} per batch)")
    print(f"relay CPU: {cpu / max(messages, 1) * 1e6:.0f} µs per message, "
          f"{cpu / max(batches, 1) * 1e6:.0f} µs per batch; by thread, per message:")
    for name, after in sorted(thread_cpu().items(), key=lambda item: -item[1]):
        used = after - threads.get(name, 0.0)
        if used > 0.01 * seconds:
            print(f"  {name:28s} {used / max(messages, 1) * 1e6:8.1f} µs")
    print_latencies(histograms, latencies)
    pool.stop()
    service.request_stop()
    await task
    return messages


# The relay's own histograms: a message's age at the broker's confirm (from its
# created_at), and each batch's publish (first produce to last confirm). Their difference
# is what a message waits before its batch is published.
LATENCIES = {
    "commit -> confirm": "outbox_relay_commit_to_confirm_seconds",
    "publish of a batch": "outbox_relay_publish_seconds",
}


def latency_histograms(service: Any) -> dict[str, dict[float, float]]:
    from prometheus_client import generate_latest

    from benchmarks.processes import parse_histogram

    text = generate_latest(service.metrics.registry).decode()
    return {what: parse_histogram(text, name) for what, name in LATENCIES.items()}


def print_latencies(before: dict[str, Any], after: dict[str, Any]) -> None:
    from benchmarks.processes import histogram_quantiles

    for what in LATENCIES:
        q = histogram_quantiles(before[what], after[what])
        print(f"{what}: p50 <= {q['p50_ms']} ms, p99 <= {q['p99_ms']} ms (bucket bounds)")


def main() -> None:
    args = parse_args()
    if args.relay_source:
        prefer_relay_source(Path(args.relay_source))
    import psycopg

    import relay
    from benchmarks.profile_drain import TOP_STATEMENTS
    from benchmarks.stack import KafkaTarget, fresh_database, running_stack
    from benchmarks.writers import Writers
    from relay.config import RelayConfig

    print(f"relay imported from {relay.__file__}")
    settings = {"shared_preload_libraries": "pg_stat_statements"}
    with running_stack(["kafka"], pg_settings=settings) as stack:
        dsn = fresh_database(stack.pg)
        target = KafkaTarget(stack.kafka_bootstrap or "")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        config = RelayConfig(
            dsn=dsn,
            connector="kafka",
            connector_options={"bootstrap.servers": target.bootstrap},
            metrics_port=0,
        )
        pool = Writers(dsn, target.topic, rate=args.rate, count=args.writers, rows_per_tx=1)
        messages = asyncio.run(measure(config, pool, args.seconds))
        print("statements (whole run, writers included), per measured message:")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for calls, total_ms, _rows, _blocks, text in conn.execute(TOP_STATEMENTS):
                print(f"  {calls / max(messages, 1):6.2f}  {total_ms:8.0f} ms  {text[:70]}")
        target.close()


if __name__ == "__main__":
    main()
