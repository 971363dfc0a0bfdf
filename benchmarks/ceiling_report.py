"""Issue 30's relay figures: drains as a fraction of the PostgreSQL-only ceiling, light
traffic (CPU per message, idle CPU, p50 against a bare producer), the verdicts, and the
table of docs/performance.md.

    python -m benchmarks.ceiling_report results/TAG.json [--update-docs docs/performance.md]

prints this part of a saved run's report again and, with ``--update-docs``, writes its
table into the file between the ``<!-- relay-ceiling:begin -->`` and
``<!-- relay-ceiling:end -->`` lines.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks.docs_page import fill_between

CEILING_KIND = "pg-claim+update"  # what every drain is held against
OTHER_CEILING_KIND = "pg-claim+delete"
# Issue 30's goals.
DRAIN_GOALS = {"poll": 0.7, "cdc": 0.6}  # fraction of the claim+update ceiling, to Kafka
CPU_GOAL_US = 600.0  # relay CPU per message at 100 msg/s, either mode
CPU_GOAL_RATE = 100.0
IDLE_GOAL_PCT = 2.0  # of one core
P50_EXCESS_GOAL_MS = 8.0  # p50 commit -> consumer above the bare producer's, at 100 msg/s
_MODES = {"poll": "polling", "cdc": "CDC"}
_BROKERS = {"kafka": "Kafka", "rabbitmq": "RabbitMQ"}


# --- drains against the ceiling -------------------------------------------------------------


def add_fractions(rows: list[dict[str, Any]]) -> None:
    """Each drain's msg/s from its start as a fraction of the claim+update ceiling's (and
    in ``of_delete_ceiling`` of the claim+delete one: outbox-relay deletes what it sent by
    default), the ceilings' own too."""
    for kind, field in ((CEILING_KIND, "of_ceiling"), (OTHER_CEILING_KIND, "of_delete_ceiling")):
        ceiling = next((r for r in rows if r["workload"] == "ceiling" and r["kind"] == kind), None)
        base = ceiling.get("msg_per_s_from_start") if ceiling else None
        if not base:
            continue
        for row in rows:
            if row["workload"] in ("drain", "ceiling") and row.get("msg_per_s_from_start"):
                # three places: a verdict must not be met by rounding
                row[field] = round(row["msg_per_s_from_start"] / base, 3)


# --- light traffic ----------------------------------------------------------------------------

LIGHT_FIELDS = (
    "relay_cpu_pct_of_core", "cpu_us_per_msg", "p50_ms", "p99_ms", "bare_p50_ms",
    "bare_p99_ms", "p50_over_bare_ms", "achieved_write_rate",
)  # fmt: skip


def light_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (relay, mode, broker, rate): the median of every figure over runs;
    ``p50_over_bare_ms`` is the relay's p50 minus the bare producer's of the same run."""
    groups: dict[tuple[str, str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["workload"] == "light":
            groups[(r["kind"], r["mode"], r["broker"], float(r["rate"]))].append(r)
    rows = []
    for (kind, mode, broker, rate), runs in sorted(groups.items(), key=_light_order):
        row: dict[str, Any] = {
            "kind": kind, "mode": mode, "broker": broker, "rate": rate, "runs": len(runs),
        }  # fmt: skip
        for run in runs:
            if run.get("p50_ms") is not None and run.get("bare_p50_ms") is not None:
                run["p50_over_bare_ms"] = round(run["p50_ms"] - run["bare_p50_ms"], 2)
        for name in LIGHT_FIELDS:
            values = [r[name] for r in runs if r.get(name) is not None]
            row[name] = round(statistics.median(values), 2) if values else None
        missing = sum(r.get("missing", 0) for r in runs)
        row["missing"] = missing
        rows.append(row)
    return rows


def _light_order(item: tuple[tuple[str, str, str, float], Any]) -> tuple[Any, ...]:
    kind, mode, broker, rate = item[0]
    return (kind != "outbox-relay", kind, mode != "poll", broker, rate)


def _light(light: list[dict[str, Any]], mode: str, rate: float, field: str) -> Any:
    row = next(
        (r for r in light if (r["kind"], r["mode"], r["rate"]) == ("outbox-relay", mode, rate)),
        None,
    )
    return None if row is None else row.get(field)


# --- verdicts ------------------------------------------------------------------------------


def _drain(summary: list[dict[str, Any]], kind: str, mode: str, broker: str) -> Any:
    return next(
        (r for r in summary if (r["workload"], r["kind"], r["mode"], r["broker"])
         == ("drain", kind, mode, broker)),
        None,
    )  # fmt: skip


def kept_up(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, broker) of the sustained workload: did the relay keep up with everything
    the writers committed at every rate offered, in every run; else the lowest rate it fell
    behind at (the writers' rate then)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["workload"] == "sustained" and r["kind"] == "outbox-relay":
            groups[(r["mode"], r["broker"])].append(r)
    found = []
    for (mode, broker), runs in groups.items():
        behind = [r["failed_msg_per_s"] for r in runs if r.get("failed_msg_per_s") is not None]
        found.append({
            "mode": mode, "broker": broker, "runs": len(runs), "kept_up": not behind,
            "runs_behind": len(behind), "fell_behind_at": min(behind) if behind else None,
            "writers_reached": max(r["max_sustained_msg_per_s"] for r in runs),
        })  # fmt: skip
    return found


def verdicts(
    summary: list[dict[str, Any]], light: list[dict[str, Any]], records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Issue 30's targets: {target, goal, measured, met}; met is None when not measured."""
    checks: list[tuple[str, Any, str, float]] = []
    for mode, goal in DRAIN_GOALS.items():
        row = _drain(summary, "outbox-relay", mode, "kafka")
        what = "drain" if mode == "poll" else "replay"
        messages = f" of {row['messages']:,}" if row and row.get("messages") else ""
        checks.append((
            f"{_MODES[mode]} -> Kafka {what}{messages}, from start, x the claim+update ceiling",
            row.get("of_ceiling") if row else None, ">=", goal,
        ))  # fmt: skip
    for mode in _MODES:
        checks.append(
            (
                f"{_MODES[mode]} relay CPU at 100 msg/s, µs/msg",
                _light(light, mode, CPU_GOAL_RATE, "cpu_us_per_msg"),
                "<=",
                CPU_GOAL_US,
            )
        )
        checks.append(
            (
                f"{_MODES[mode]} relay idle, % of a core",
                _light(light, mode, 0.0, "relay_cpu_pct_of_core"),
                "<=",
                IDLE_GOAL_PCT,
            )
        )
        checks.append((f"{_MODES[mode]} p50 commit -> consumer at 100 msg/s, ms above the bare "
                       "producer's", _light(light, mode, CPU_GOAL_RATE, "p50_over_bare_ms"),
                       "<=", P50_EXCESS_GOAL_MS))  # fmt: skip
    out = [
        {"target": what, "goal": f"{op} {goal:g}", "measured": measured,
         "met": _met(measured, op, goal)}
        for what, measured, op, goal in checks
    ]  # fmt: skip
    for mode in _MODES:
        _out_of_reach_below_the_minimal_relay(out, light, mode)
    for row in kept_up(records):
        out.append({
            "target": f"{_MODES[row['mode']]} -> {_BROKERS[row['broker']]} sustained with "
                      "writers: kept up with everything they committed",
            "goal": "kept up", "measured": _kept_up_text(row), "met": row["kept_up"],
        })  # fmt: skip
    return out


def _out_of_reach_below_the_minimal_relay(
    found: list[dict[str, Any]], light: list[dict[str, Any]], mode: str
) -> None:
    """A CPU goal of ``mode`` missed where even the cheapest minimal relay of that mode in
    the same run (polling: one claim cycle per commit; CDC: one produce and flush per
    streamed commit; the same libraries, nothing else) costs more than the goal reads
    "out of reach", with that relay's figure and ours as a multiple of it (what is left is
    the relay's own cost), as the writer's targets do with their ceiling."""
    minimal = [
        r["cpu_us_per_msg"]
        for r in light
        if r["kind"].startswith("minimal")
        and r["mode"] == mode
        and r["rate"] == CPU_GOAL_RATE
        and r.get("cpu_us_per_msg")
    ]
    if not minimal or min(minimal) <= CPU_GOAL_US:
        return
    target = f"{_MODES[mode]} relay CPU at 100 msg/s"
    for t in found:
        if t["target"].startswith(target) and t["met"] is False:
            floor = min(minimal)
            t["met"] = (
                f"out of reach: minimal relay {floor:,.0f} (ours {t['measured'] / floor:.2f}x)"
            )


def _met(measured: Any, op: str, goal: float) -> bool | None:
    if measured is None:
        return None
    return bool(measured >= goal if op == ">=" else measured <= goal)


def _kept_up_text(row: dict[str, Any]) -> str:
    if row["kept_up"]:
        return f"yes, up to {row['writers_reached']:,} msg/s"
    return (f"fell behind at {row['fell_behind_at']:,} msg/s "
            f"({row['runs_behind']} of {row['runs']} runs)")  # fmt: skip


# --- Markdown --------------------------------------------------------------------------------


def _cell(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _drain_label(row: dict[str, Any]) -> str:
    if row["workload"] == "ceiling":
        if row["kind"] == CEILING_KIND:
            return "PostgreSQL alone: claim 1,000 + UPDATE, commit (the ceiling)"
        return "PostgreSQL alone: claim 1,000 + DELETE, commit"
    relay = {"tutorial": "tutorial relay (batch 100)", "naive": "naive relay (row by row)"}
    name = relay.get(row["kind"], row["kind"])
    return f"{name}, {_MODES.get(row['mode'], row['mode'])} -> {_BROKERS[row['broker']]}"


def drain_table(summary: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| drain | msg/s from start | x ceiling | x delete ceiling | msg/s first to last | "
        "first message after start, s | relay CPU µs/msg | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [r for r in summary if r["workload"] == "ceiling"]
    rows += [r for r in summary if r["workload"] == "drain"]
    for r in rows:
        first = None if r["workload"] == "ceiling" else r.get("startup_seconds")
        note = "" if r.get("complete", True) else " (a window, not all)"
        lines.append(
            f"| {_drain_label(r)}{note} | {_cell(r.get('msg_per_s_from_start'))} | "
            f"{_cell(r.get('of_ceiling'), 2)} | {_cell(r.get('of_delete_ceiling'), 2)} | "
            f"{_cell(r.get('msg_per_s'))} | "
            f"{_cell(first, 2)} | {_cell(r.get('cpu_us_per_msg'))} | {r['runs']} |"
        )
    return lines


LIGHT_RELAYS = {
    "tutorial": "tutorial (sleeps 100 ms)",
    "minimal": "minimal relay, the ceiling (librdkafka defaults, flush)",
    "minimal-relay-kafka": "minimal relay (our librdkafka settings, flush)",
    "minimal-relay-kafka-thread": "minimal relay (our librdkafka settings, report thread)",
    "minimal-cdc": "minimal CDC relay, the ceiling (librdkafka defaults, flush)",
    "minimal-cdc-relay-kafka": "minimal CDC relay (our librdkafka settings, flush)",
    "minimal-cdc-relay-kafka-thread": "minimal CDC relay (our librdkafka settings, report thread)",
}


def light_table(light: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| relay | mode | msg/s | relay CPU µs/msg | relay CPU, % of a core | p50 commit → "
        "consumer, ms | bare producer p50, ms | p50 above bare, ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in light:
        relay = LIGHT_RELAYS.get(r["kind"], r["kind"])
        rate = "idle" if r["rate"] == 0 else _cell(r["rate"])
        reached = r.get("achieved_write_rate")
        if r["rate"] and reached is not None and reached < 0.95 * r["rate"]:
            rate += f" ({reached:,.0f} reached)"  # the writers fell behind the pace
        lines.append(
            f"| {relay} | {_MODES.get(r['mode'], r['mode'])} | {rate} | "
            f"{_cell(r.get('cpu_us_per_msg'))} | {_cell(r.get('relay_cpu_pct_of_core'), 1)} | "
            f"{_cell(r.get('p50_ms'), 1)} | {_cell(r.get('bare_p50_ms'), 1)} | "
            f"{_cell(r.get('p50_over_bare_ms'), 1)} |"
        )
    return lines


def verdict_table(found: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | goal | measured | met |", "|---|---|---:|---|"]
    for t in found:
        measured = t["measured"]
        small = isinstance(measured, float) and measured < 10
        shown = f"{measured:.3g}" if small else _cell(measured)
        lines.append(f"| {t['target']} | {t['goal']} | {shown} | {_cell(t['met'])} |")
    return lines


def section(document: dict[str, Any]) -> list[str]:
    """The drains, light traffic and verdicts of a run, as Markdown lines."""
    lines: list[str] = []
    if any(r["workload"] in ("drain", "ceiling") for r in document["summary"]):
        lines += [*drain_table(document["summary"]), ""]
    if document.get("light"):
        lines += [*light_table(document["light"]), ""]
    if document.get("issue30_targets"):
        lines += verdict_table(document["issue30_targets"])
    return lines


def docs_table(document: dict[str, Any]) -> list[str]:
    meta = document["meta"]
    load = meta.get("loadavg_at_start")
    return [
        f"`{meta['command']}`, relay tree {meta['relay_tree']}, {meta['started_at']} to "
        f"{meta.get('finished_at')} ({meta['machine']}; load average at the start "
        f"{load[0]:.1f}). Medians of the runs shown."
        if load else f"`{meta['command']}`, relay tree {meta['relay_tree']}.",
        "",
        *section(document),
    ]  # fmt: skip


BEGIN, END = "<!-- relay-ceiling:begin -->", "<!-- relay-ceiling:end -->"


def update_docs(path: Path, document: dict[str, Any]) -> None:
    """Replace the lines between the markers of ``path`` with this run's tables."""
    fill_between(path, BEGIN, END, docs_table(document))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results/<tag>.json of benchmarks.run")
    parser.add_argument("--update-docs", type=Path, metavar="MD")
    args = parser.parse_args()
    document = orjson.loads(args.results.read_bytes())
    print("\n".join(docs_table(document)))
    if args.update_docs:
        update_docs(args.update_docs, document)
        print(f"updated {args.update_docs}")


if __name__ == "__main__":
    main()
