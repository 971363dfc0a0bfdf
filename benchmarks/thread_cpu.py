"""Where a relay's CPU goes at a steady light rate, thread by thread:
``python -m benchmarks.thread_cpu``.

    python -m benchmarks.thread_cpu --mode cdc                  # outbox-relay at 100 msg/s
    python -m benchmarks.thread_cpu --mode cdc --kind minimal-cdc-relay-kafka
    python -m benchmarks.thread_cpu --mode poll --rate 0 --seconds 60     # idle

Starts a private PostgreSQL and Tansu, one relay (the installed ``outbox-relay run`` with
its defaults, or a minimal relay of ``benchmarks.processes.MINIMAL_VARIANTS``) and the
light workload's writer (one-row transactions, ``benchmarks.light``) at ``--rate``. After a
warm-up it reads each of the relay's threads from ``/proc/PID/task`` twice, ``--seconds``
apart: CPU (utime + stime) and voluntary context switches (each a sleep, so a wake-up
after it), and prints both per message the relay delivered in between (idle: per
second).

The light workload's figure is the whole process; this one says which thread pays and
how often each wakes, which the whole process hides: two relays with the same wake-ups
a message differ by what each wake-up costs. About 40 s a run, so A/B trees can take
turns (run it from each tree's own environment; the relay is that tree's installed
command).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.light import SETTLE, WriterSpec, light_writer
from benchmarks.processes import CLOCK_TICKS, MINIMAL_VARIANTS, log_dir
from benchmarks.stack import running_stack
from benchmarks.workloads import Case, Session

WARMUP = 4.0  # seconds of traffic before the window


@dataclass(frozen=True)
class ThreadSample:
    name: str  # "main", or the thread's name as the kernel knows it (rdk:broker1, ...)
    cpu_seconds: float
    wakeups: int  # voluntary context switches so far


def thread_samples(pid: int) -> dict[int, ThreadSample]:
    """Every live thread of ``pid``, by thread id."""
    samples = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:  # the thread ended
            continue
        tid = int(task.name)
        fields = stat.rpartition(")")[2].split()  # fields[0] is field 3 (state)
        name = "main" if tid == pid else stat[stat.index("(") + 1 : stat.rindex(")")]
        switches = status.partition("voluntary_ctxt_switches:")[2].split()[0]
        samples[tid] = ThreadSample(
            name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, int(switches)
        )
    return samples


def per_unit(
    before: dict[int, ThreadSample], after: dict[int, ThreadSample], units: float
) -> list[tuple[str, float, float]]:
    """(thread, CPU µs a unit, wake-ups a unit) for each thread that did either in
    between, the busiest first; a thread that started in between counts from zero. The
    unit is a message delivered, or a second when idle."""
    rows = []
    for tid, end in after.items():
        start = before.get(tid, ThreadSample(end.name, 0.0, 0))
        cpu, wakeups = end.cpu_seconds - start.cpu_seconds, end.wakeups - start.wakeups
        if cpu or wakeups:
            label = end.name if end.name == "main" else f"{end.name} ({tid})"
            rows.append((label, cpu / units * 1e6, wakeups / units))
    return sorted(rows, key=lambda row: -row[1])


def measure(
    mode: str, kind: str, rate: float, seconds: float
) -> tuple[int, float, list[tuple[str, float, float]]]:
    """One relay at ``rate``: (messages delivered in the window, its length, per thread)."""
    logs = log_dir()
    with running_stack(["kafka"]) as stack:
        session = Session(stack, Case(kind, mode, "kafka"), logs, [])
        direct = stack.target("kafka")
        writer = None
        try:
            session.start_relay()
            session.wait_ready()
            time.sleep(SETTLE)
            if rate > 0:
                spec = WriterSpec(
                    session.dsn, session.target.topic, direct.topic,
                    stack.kafka_bootstrap or "", rate, 0,
                    str(logs / f"thread-cpu-commits-{os.getpid()}"),
                )  # fmt: skip
                writer = light_writer(spec)
                time.sleep(WARMUP)
            assert session.relay is not None
            pid = session.relay.pid
            before, delivered, started = thread_samples(pid), session.delivered(), time.time()
            time.sleep(seconds)
            session.check_alive()
            after, messages = thread_samples(pid), session.delivered() - delivered
            window = time.time() - started
        finally:
            if writer is not None:
                writer.stop()
            direct.close()
            session.close()
    units = messages if rate > 0 else window
    if not units:
        raise SystemExit(f"{kind} delivered nothing in {window:.1f} s at {rate:g} msg/s")
    return messages, window, per_unit(before, after, units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("poll", "cdc"), default="cdc")
    parser.add_argument(
        "--kind", default="outbox-relay", choices=("outbox-relay", *MINIMAL_VARIANTS)
    )
    parser.add_argument("--rate", type=float, default=100.0, help="msg/s; 0: idle")
    parser.add_argument("--seconds", type=float, default=12.0, help="the measured window")
    args = parser.parse_args()
    messages, window, rows = measure(args.mode, args.kind, args.rate, args.seconds)
    total = sum(row[1] for row in rows)
    unit = "a message" if args.rate > 0 else "a second"
    print(f"{args.kind}, {args.mode}, {args.rate:g} msg/s: {messages} messages in "
          f"{window:.1f} s; CPU {total:,.0f} µs {unit}")  # fmt: skip
    for label, cpu_us, wakeups in rows:
        print(f"  {label:28} {cpu_us:9,.1f} µs  {wakeups:6.2f} wake-ups {unit}")


if __name__ == "__main__":
    main()
