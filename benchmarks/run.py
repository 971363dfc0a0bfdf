"""Run the benchmark suite: ``python -m benchmarks.run [--quick | --soak [SECONDS]]``.

    uv run --group bench python -m benchmarks.run --quick   # about 15 minutes
    uv run --group bench python -m benchmarks.run           # full: about 65 minutes
    uv run --group bench python -m benchmarks.run --soak 600

Starts a private PostgreSQL 15 cluster (fsync on), a Tansu broker and a RabbitMQ node on
loopback (or uses --kafka-bootstrap / --amqp-url), then:

- ceiling: what PostgreSQL alone claims and marks (or deletes) per second, 1,000 rows a
  transaction, no broker (benchmarks/ceiling.py); every drain is reported as a fraction
  of the claim+update one;
- light: the relay idle, then at 10, 100 and 1,000 one-row transactions a second (Kafka):
  its CPU per message and p50 next to a bare producer's, and the minimal relays' at 100
  msg/s, the ceiling of that CPU in each mode (benchmarks/light.py,
  benchmarks/minimal_relay.py, benchmarks/minimal_cdc_relay.py);
- writer: what the outbox costs the application's writes (Kafka): one writer, every way
  into the outbox and the baselines (a plain INSERT, a tutorial outbox, the ceiling of any
  outbox with these promises) taking turns, 1,000 rows and 1 row a transaction, with no
  relay and with the relay polling (benchmarks/writer_cost.py, which also runs it alone
  with more options; quick: 3 rounds of 0.8 s a way, full: writer_cost's 5 of 2 s);

and for each mode (poll; cdc when ``outbox-relay run --mode cdc`` works), each broker,
and each relay (the installed ``outbox-relay`` command; the tutorial baseline of
benchmarks/tutorial_relay.py, polling to Kafka; with ``--kinds ...,naive`` the row-by-row
one of benchmarks/naive_relay.py):

- drain: N events preloaded while the relay is down; msg/s from the first to the last
  event at the broker and from the relay's start (startup counts), relay CPU per
  message, peak RSS;
- sustained: writer processes offer rising rates (fractions of the drain rate); the
  highest rate whose backlog stays flat;
- latency: single-event transactions at 1,000/s; COMMIT -> consumer percentiles, next to
  the floor of the broker and consumer alone (a producer in this process);
- drain-1m (full runs, or ``--workloads drain-1m``): 1,000,000 events, RSS along the way.

Results (JSON, a Markdown table, a latency PNG) go to benchmarks/results/<tag>.*;
``--update-docs docs/performance.md`` writes both of its generated blocks from the run: the
drains, light traffic and issue 30's targets (the writer's among them), and the writer table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

import relay
from benchmarks import report, writer_report
from benchmarks.ceiling import KINDS as CEILING_KINDS
from benchmarks.ceiling import run_ceilings
from benchmarks.floor import latency_floor
from benchmarks.light import run_light
from benchmarks.processes import MachineShare, byte_compile, cdc_available, log_dir
from benchmarks.soak import soak
from benchmarks.stack import Stack, drop_database, fresh_database, running_stack
from benchmarks.workloads import Case, drain, latency, sustained, sustained_rates
from benchmarks.writer_cost import WriterPlan, writer_workload
from benchmarks.writers import writers_alone

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(relay.__file__).resolve().parents[1]  # the relay's source tree, for git


@dataclass(frozen=True)
class Plan:
    tag: str
    runs: int
    drain_messages: int
    naive_window: float  # seconds: the naive relay is measured over a window
    naive_runs: int
    ramp: tuple[float, ...]  # offered rates, as fractions of the measured drain rate
    step: float
    bisect: int
    sustained_runs: int
    naive_sustained: bool
    latency_seconds: float
    latency_warmup: float
    latency_runs: int
    million: bool  # one extra 1,000,000-message drain, for RSS flatness
    writer: WriterPlan


QUICK = Plan(
    "quick", 3, 30_000, 6, 1, (0.3, 0.5, 0.75, 1.0), 4, 0, 1, False, 5, 1, 1, False,
    WriterPlan(rounds=3, seconds=0.8),  # about 4 minutes; three rounds still give a median
)  # fmt: skip
FULL = Plan(
    "full",
    3,
    200_000,
    20,
    3,
    (0.3, 0.45, 0.6, 0.75, 0.9, 1.05, 1.2),
    12,
    2,
    3,
    True,
    8,  # latency: short runs on fresh topics; Tansu's fetch slows as a topic grows, and a
    2,  # 30 s run at 1,000/s measured that (p99 of seconds even without a relay)
    3,
    True,
    WriterPlan(),
)
WRITERS, ROWS_PER_TX, LATENCY_RATE = 4, 10, 1000.0


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so every relay, writer and service is stopped by PID
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = parse_args()
    byte_compile()  # startup counts: the relays start as installed ones do
    plan = QUICK if args.quick else FULL
    if args.drain_messages:
        plan = Plan(**{**vars(plan), "drain_messages": args.drain_messages})
    if args.runs:
        plan = Plan(
            **{
                **vars(plan),
                "runs": args.runs,
                "sustained_runs": args.runs,
                "latency_runs": args.runs,
                "naive_runs": min(args.runs, plan.naive_runs),
            }
        )
    tag = args.tag or ("soak" if args.soak else plan.tag)
    brokers = args.brokers.split(",")
    logs = log_dir()
    meta = _meta(tag, logs)
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    extras: dict[str, Any] = {}
    with running_stack(
        brokers, kafka_bootstrap=args.kafka_bootstrap, amqp_url=args.amqp_url
    ) as stack:
        modes = _usable_modes(stack, args.modes.split(","), brokers[0], logs, notes)
        if args.soak:
            _soak_all(stack, modes, brokers, logs, args, records, extras)
        else:
            _suite(stack, plan, modes, brokers, logs, args, records, extras, notes)
    if args.replace_in:
        records, notes, extras, meta = _merged(args, records, notes, extras, meta)
        tag = args.replace_in
    document = report.build_document(meta, records, notes, extras)
    document["meta"]["finished_at"] = _now()
    for path in report.write_all(args.output, tag, document):
        print(f"wrote {path}")
    print(report.markdown(document))
    if args.update_docs:
        report.update_docs(args.update_docs, document)
        print(f"updated {args.update_docs}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller and fewer runs (~15 min)")
    parser.add_argument(
        "--soak",
        type=float,
        nargs="?",
        const=600.0,
        metavar="SECONDS",
        help="only the soak: writers at a steady rate for SECONDS (600)",
    )
    parser.add_argument("--soak-rate", type=float, default=6_000.0)
    parser.add_argument("--modes", default="poll,cdc")
    parser.add_argument("--brokers", default="kafka,rabbitmq")
    parser.add_argument(
        "--workloads",
        default="ceiling,drain,sustained,latency,light,writer",
        help="which to run (default: all of %(default)s; drain-1m too in full runs)",
    )
    parser.add_argument(
        "--drain-messages", type=int, help="events per drain and ceiling run (quick: 30,000)"
    )
    parser.add_argument(
        "--light-runs", type=int, default=1, help="runs of the light-traffic workload (1)"
    )
    parser.add_argument(
        "--light-rates", help="outbox-relay's light-traffic rates, msg/s (10,100,1000)"
    )
    parser.add_argument("--runs", type=int, help="runs per figure (median); default 3")
    parser.add_argument(
        "--writers",
        type=int,
        default=WRITERS,
        help=f"writer processes in the sustained and soak workloads (default {WRITERS})",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument(
        "--kinds",
        default="outbox-relay,tutorial,direct-producer",
        help="which relays to run: outbox-relay, tutorial (the baseline), naive (one row at "
        "a time), direct-producer (the latency floor without a relay)",
    )
    parser.add_argument(
        "--replace-in",
        metavar="TAG",
        help="merge into results/TAG.json: these runs replace the records of the same "
        "workload, relay, mode and broker there (to rerun one part of a long suite)",
    )
    parser.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for outbox-relay run (repeatable)",
    )
    parser.add_argument("--kafka-bootstrap", help="use this Kafka instead of a private Tansu")
    parser.add_argument("--amqp-url", help="use this RabbitMQ instead of a private node")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--tag", help="results file name (default: quick, full or soak)")
    parser.add_argument(
        "--update-docs",
        type=Path,
        metavar="MD",
        help="write the drains, light traffic and issue 30's verdicts into this file "
        "(docs/performance.md) between its relay-ceiling markers, and the writer workload's "
        "table between its writer-cost markers",
    )
    return parser.parse_args()


def _merged(
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    notes: list[str],
    extras: dict[str, Any],
    meta: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any], dict[str, Any]]:
    """The records of results/<replace_in>.json, with this invocation's replacing theirs."""
    old = orjson.loads((args.output / f"{args.replace_in}.json").read_bytes())

    def key(r: dict[str, Any]) -> tuple[str, ...]:
        return (r["workload"], r["kind"], r["mode"], r["broker"])

    fresh = {key(r) for r in records}
    kept = [r for r in old["records"] if key(r) not in fresh]
    rerun = ", ".join(sorted("/".join(k) for k in fresh))
    # Every rerun is kept with its own tree: the file's relay_tree is the first run's.
    earlier = list(old["meta"].get("reruns", []))
    if "rerun" in old["meta"]:  # a file written when only the last rerun was kept
        earlier.insert(0, old["meta"]["rerun"])
    this_run = {
        "command": meta["command"],
        "at": meta["started_at"],
        "relay_tree": meta["relay_tree"],
        "replaced": rerun,
    }
    merged_meta = {k: v for k, v in old["meta"].items() if k != "rerun"}
    merged_meta["reruns"] = [*earlier, this_run]
    merged_notes = [
        *old.get("notes", []),
        *notes,
        f"rerun on {meta['started_at']} with relay tree {meta['relay_tree']}: {rerun}",
    ]
    merged_extras = {**old.get("extras", {}), **extras}
    merged_extras.pop("peak_rss_mb", None)
    return kept + records, merged_notes, merged_extras, merged_meta


def _usable_modes(
    stack: Stack, wanted: list[str], broker: str, logs: Path, notes: list[str]
) -> list[str]:
    modes = [m for m in wanted if m != "cdc"]
    if "cdc" in wanted:
        target, dsn = stack.target(broker), fresh_database(stack.pg)
        try:
            works, why = cdc_available(dsn, target.relay_args(), logs)
        finally:
            target.close()
            drop_database(stack.pg, dsn)
        if works:
            modes.append("cdc")
        else:
            notes.append(f"CDC mode skipped: `outbox-relay run --mode cdc` says: {why}")
            print(f"skipping CDC mode: {why}", flush=True)
    return modes


def _suite(
    stack: Stack,
    plan: Plan,
    modes: list[str],
    brokers: list[str],
    logs: Path,
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    extras: dict[str, Any],
    notes: list[str],
) -> None:
    workloads = args.workloads.split(",")
    kinds = [k for k in args.kinds.split(",") if k in ("outbox-relay", "tutorial", "naive")]
    if args.no_naive:
        kinds = [k for k in kinds if k != "naive"]
    if "ceiling" in workloads and "drain" not in workloads:
        run_ceilings(stack, runs=plan.runs, messages=plan.drain_messages, record=_recorder(records))
    if "light" in workloads and "kafka" in brokers:
        rates = tuple(float(r) for r in args.light_rates.split(",")) if args.light_rates else None
        run_light(stack, modes, logs, runs=args.light_runs, extra=args.relay_arg,
                  record=_recorder(records), relay_rates=rates)  # fmt: skip
    if writer_report.WORKLOAD in workloads:
        _writer(stack, plan, brokers, records, notes)
    if "sustained" in workloads and "outbox-relay" in kinds:
        _writers_alone(stack, plan, args, records)
    for broker in brokers:
        if "latency" in workloads and "direct-producer" in args.kinds.split(","):
            case = Case("direct-producer", "none", broker)
            _record(
                records,
                "latency",
                case,
                1,
                lambda broker=broker: latency_floor(
                    stack,
                    broker,
                    rate=LATENCY_RATE,
                    seconds=plan.latency_seconds,
                    warmup=plan.latency_warmup,
                ),
            )
        for mode in modes:
            for kind in kinds:
                if kind == "naive" and mode != "poll":
                    continue  # the baseline polls; CDC results are compared with it
                if kind == "tutorial":
                    if "drain" in workloads and (mode, broker) == ("poll", "kafka"):
                        _drains(stack, plan, Case(kind, mode, broker), logs, args, records)
                    continue  # a drain baseline only (Kafka); light traffic runs it too
                case = Case(kind, mode, broker)
                drain_rate = (
                    _drains(stack, plan, case, logs, args, records)
                    if "drain" in workloads
                    else None
                )
                if "sustained" in workloads and (kind != "naive" or plan.naive_sustained):
                    _sustained(stack, plan, case, logs, args, records, drain_rate)
                if "latency" in workloads:
                    _latency(stack, plan, case, logs, args, records, drain_rate, notes)
    if ((plan.million and "drain" in workloads) or "drain-1m" in workloads) and "poll" in modes:
        broker = "kafka" if "kafka" in brokers else brokers[0]
        result = _record(
            records,
            "drain-1m",
            Case("outbox-relay", "poll", broker),
            1,
            lambda: drain(
                stack,
                Case("outbox-relay", "poll", broker),
                logs,
                messages=1_000_000,
                limit=1800,
                extra=args.relay_arg,
            ),
        )
        curve = result["rss_mb_by_delivered"]
        tenth = next((rss for count, rss in curve if count >= 100_000), curve[0][1])
        extras["rss_growth_mb_over_1m"] = round(curve[-1][1] - tenth, 1)
        extras["rss_mb_by_delivered_1m"] = curve


def _recorder(records: list[dict[str, Any]]) -> Any:
    """``_record`` into ``records``, for the workloads that live in their own modules."""
    return lambda workload, case, run, measure: _record(records, workload, case, run, measure)


def _record(
    records: list[dict[str, Any]], workload: str, case: Case, run: int, measure: Any
) -> dict[str, Any]:
    print(f"[{time.strftime('%H:%M:%S')}] {workload} {case.label()} run {run} ...", flush=True)
    share = MachineShare()
    share.start()
    result = measure()
    # The whole run's share, setup included: what the hypervisor took is the point.
    result = {**share.stop(), **result}  # a workload's own busy figure wins
    record = {
        "workload": workload,
        "kind": case.kind,
        "mode": case.mode,
        "broker": case.broker,
        "run": run,
        **result,
    }
    records.append(record)
    shown = {k: v for k, v in result.items() if not isinstance(v, list | dict)}
    print(f"    {shown}", flush=True)
    for step in result.get("steps", []):
        print(f"      step {step}", flush=True)
    return record


def _drains(
    stack: Stack,
    plan: Plan,
    case: Case,
    logs: Path,
    args: argparse.Namespace,
    records: list[dict[str, Any]],
) -> float:
    naive = case.kind == "naive"
    runs = plan.naive_runs if naive else plan.runs
    # The ceiling takes turns with the Kafka drains, so its median spans the same
    # minutes of this shared machine as the drains it is the ceiling of.
    ceiling = "ceiling" in args.workloads.split(",") and case.broker == "kafka" and not naive
    rates = []
    for run in range(1, runs + 1):
        if ceiling:
            earlier = sum(r["workload"] == "ceiling" for r in records) // len(CEILING_KINDS)
            run_ceilings(stack, runs=1, messages=plan.drain_messages,
                         record=_recorder(records), first_run=earlier + 1)  # fmt: skip
        result = _record(
            records,
            "drain",
            case,
            run,
            lambda: drain(
                stack,
                case,
                logs,
                messages=plan.drain_messages,
                limit=plan.naive_window if naive else 600,
                extra=args.relay_arg,
            ),
        )
        rates.append(result["msg_per_s"])
    return sorted(rates)[len(rates) // 2]


def _writer(
    stack: Stack,
    plan: Plan,
    brokers: list[str],
    records: list[dict[str, Any]],
    notes: list[str],
) -> None:
    """What the outbox costs the application's writes; its relay-running half drains
    into Kafka, so it runs only with Kafka among the brokers."""
    if "kafka" not in brokers:
        notes.append("writer workload skipped: its relay-running half publishes to Kafka")
        return
    case = Case("outbox-relay", "poll", "kafka")
    _record(records, writer_report.WORKLOAD, case, 1, lambda: writer_workload(stack, plan.writer))


def _writers_alone(
    stack: Stack, plan: Plan, args: argparse.Namespace, records: list[dict[str, Any]]
) -> None:
    """The writers' own ceiling, no relay: what "the writers' limit" in a sustained
    result stands for on this machine."""
    dsn = fresh_database(stack.pg)
    try:
        _record(
            records,
            "sustained",
            Case("writers-alone", "none", "none"),
            1,
            lambda: writers_alone(
                dsn,
                "writers-alone",
                seconds=plan.step * 2,
                count=args.writers,
                rows_per_tx=ROWS_PER_TX,
            ),
        )
    finally:
        drop_database(stack.pg, dsn)


def _sustained(
    stack: Stack,
    plan: Plan,
    case: Case,
    logs: Path,
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    drain_rate: float | None,
) -> None:
    rates = sustained_rates(plan.ramp, case, drain_rate)
    writers = 1 if case.kind == "naive" else args.writers
    for run in range(1, plan.sustained_runs + 1):
        _record(
            records,
            "sustained",
            case,
            run,
            lambda: sustained(
                stack,
                case,
                logs,
                rates=rates,
                step=plan.step,
                bisect=plan.bisect,
                writers=writers,
                rows_per_tx=ROWS_PER_TX,
                extra=args.relay_arg,
            ),
        )


def _latency(
    stack: Stack,
    plan: Plan,
    case: Case,
    logs: Path,
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    drain_rate: float | None,
    notes: list[str],
) -> None:
    if drain_rate is not None and drain_rate < LATENCY_RATE * 1.1:
        notes.append(
            f"latency of {case.label()} not measured: it drains {drain_rate:,.0f} "
            f"msg/s, below the offered {LATENCY_RATE:,.0f}/s, so its backlog (and "
            "latency) grows without bound"
        )
        return
    for run in range(1, plan.latency_runs + 1):
        _record(
            records,
            "latency",
            case,
            run,
            lambda: latency(
                stack,
                case,
                logs,
                rate=LATENCY_RATE,
                seconds=plan.latency_seconds,
                warmup=plan.latency_warmup,
                extra=args.relay_arg,
            ),
        )


def _soak_all(
    stack: Stack,
    modes: list[str],
    brokers: list[str],
    logs: Path,
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    extras: dict[str, Any],
) -> None:
    for broker in brokers:
        for mode in modes:
            case = Case("outbox-relay", mode, broker)
            result = _record(
                records,
                "soak",
                case,
                1,
                lambda case=case: soak(
                    stack,
                    case,
                    logs,
                    rate=args.soak_rate,
                    seconds=args.soak,
                    windows=max(4, min(20, int(args.soak // 15))),
                    writers=args.writers,
                    rows_per_tx=ROWS_PER_TX,
                    extra=args.relay_arg,
                ),
            )
            first, last = result["relay_rate_first_last"]
            if mode == "poll" and broker == brokers[0] and first:
                extras["soak_rate_decay_pct"] = round(max(0.0, (first - last) / first * 100), 1)
                cpu_first, cpu_last = result["cpu_us_first_last"]
                if cpu_first and cpu_last:
                    extras["soak_cpu_increase_pct"] = round((cpu_last / cpu_first - 1) * 100, 1)
                backlog = result["backlog_first_last"][1]
                extras["soak_final_backlog_seconds"] = round(backlog / args.soak_rate, 2)


def _meta(tag: str, logs: Path) -> dict[str, Any]:
    def git(*argv: str) -> str:
        result = subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    dirty = git("status", "--porcelain", "--", "relay", "connectors")
    return {
        "tag": tag,
        "command": "python -m benchmarks.run " + shlex.join(sys.argv[1:]),
        "started_at": _now(),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}",
        "python": platform.python_version(),
        "relay_tree": git("rev-parse", "--short", "HEAD")
        + (" + uncommitted changes to relay/ or connectors/" if dirty else ""),
        "relay_logs": str(logs),
        "loadavg_at_start": os.getloadavg(),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    main()
