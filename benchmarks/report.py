"""Results: medians over runs, drains as a fraction of the PostgreSQL-only ceiling (and
ratios to the naive relay when it ran), targets, JSON + Markdown + PNG."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks import ceiling_report, writer_report

# The figures each workload reports in the summary, in table order.
SUMMARY_FIELDS = {
    "drain": [
        "msg_per_s",
        "msg_per_s_from_start",
        "cpu_us_per_msg",
        "peak_rss_mb",
        "startup_seconds",
        "messages",
    ],
    "ceiling": ["msg_per_s", "msg_per_s_from_start", "messages"],
    "drain-1m": ["msg_per_s", "cpu_us_per_msg", "peak_rss_mb", "startup_seconds"],
    "sustained": ["max_sustained_msg_per_s", "cpu_us_per_msg", "peak_rss_mb"],
    "latency": [
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "cpu_us_per_msg",
        "peak_rss_mb",
        "confirm_p50_ms",
        "confirm_p99_ms",
    ],
}
RATE_FIELD = {"drain": "msg_per_s", "sustained": "max_sustained_msg_per_s"}
# A target's verdict when the measured figure is below it only because the writers could
# not offer the goal: it is then neither met nor missed by the relay.
WRITER_LIMITED = "not shown: writer-limited"
# A writer-limited sustained target's verdict when its goal is also above what the
# writers alone, with no relay and no broker on the machine, committed in the same
# invocation: no relay could show it on this machine.
BEYOND_WRITERS = "not shown: above the writers alone"
# The issue's sustained targets, msg/s, by (mode, broker).
SUSTAINED_GOALS = {
    ("poll", "kafka"): 20_000,
    ("cdc", "kafka"): 30_000,
    ("poll", "rabbitmq"): 8_000,
    ("cdc", "rabbitmq"): 8_000,
}


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, relay, mode, broker): the median of every figure over runs."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["workload"] in SUMMARY_FIELDS:
            key = (record["workload"], record["kind"], record["mode"], record["broker"])
            groups[key].append(record)
    rows = []
    for (workload, kind, mode, broker), runs in groups.items():
        row: dict[str, Any] = {
            "workload": workload,
            "kind": kind,
            "mode": mode,
            "broker": broker,
            "runs": len(runs),
        }
        for name in SUMMARY_FIELDS[workload]:
            values = [r[name] for r in runs if r.get(name) is not None]
            row[name] = round(statistics.median(values), 1) if values else None
        if workload == "latency":
            row["notes"] = _latency_notes(runs)
        if workload == "sustained":
            _sustained_notes(row, runs)
        if kind == "writers-alone":
            busy = statistics.median(r["machine_busy_pct"] for r in runs)
            row["notes"] = f"no relay, no broker: the writers' ceiling ({busy:g} % of CPU busy)"
        if workload == "drain":
            row["complete"] = all(r.get("complete") for r in runs)
        _steal_note(row, runs)
        rows.append(row)
    _add_ratios(rows)
    ceiling_report.add_fractions(rows)
    return rows


# Below this share of the cores taken by the hypervisor, a run's figures are its own.
STEAL_WORTH_NOTING_PCT = 2.0


def _steal_note(row: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Say so when the hypervisor took a noticeable share of the cores during the runs:
    the figures are then partly the host's, not this machine's."""
    steal = [r["machine_steal_pct"] for r in runs if r.get("machine_steal_pct") is not None]
    if not steal or max(steal) < STEAL_WORTH_NOTING_PCT:
        return
    span = f"{min(steal):g} to {max(steal):g}" if len(steal) > 1 else f"{steal[0]:g}"
    note = f"the hypervisor took {span} % of the cores' time (steal)"
    row["notes"] = f"{row['notes']}; {note}" if row.get("notes") else note


def _sustained_notes(row: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    limited = sum(bool(r.get("lower_bound")) for r in runs)
    if limited:
        row["notes"] = (
            f"writer-limited in {limited} of {len(runs)} runs: the relay kept up with "
            "all the writers could commit, so those figures are lower bounds"
        )
    goal = SUSTAINED_GOALS.get((row["mode"], row["broker"]))
    if goal is not None:
        # Below the goal is the relay's shortfall only where the relay fell behind; a run
        # whose writers could not offer the goal shows nothing either way.
        row["relay_short_runs"] = sum(_relay_fell_short(r, goal) for r in runs)


def _relay_fell_short(run: dict[str, Any], goal: float) -> bool:
    """The relay itself fell behind below ``goal`` in this run: its figure is its own
    limit and below the goal, or some step failed below the goal (a lower bound from a
    writer-limited step can sit under a failure the run also saw)."""
    failed = run.get("failed_msg_per_s")
    if failed is not None and failed < goal:
        return True
    return not run.get("lower_bound") and run["max_sustained_msg_per_s"] < goal


def _latency_notes(runs: list[dict[str, Any]]) -> str:
    missing = sum(r.get("missing", 0) for r in runs)
    achieved = statistics.median(r.get("achieved_write_rate", r.get("rate", 0)) for r in runs)
    note = f"offered {achieved:.0f}/s" + (f", {missing} not received" if missing else "")
    confirm_p99 = [r["confirm_p99_ms"] for r in runs if r.get("confirm_p99_ms") is not None]
    if confirm_p99:  # commit (or publish) to the broker's confirm, before any consumer
        bound = "<= " if runs[0]["kind"] != "direct-producer" else ""  # a histogram bucket
        note += f"; to confirm: p99 {bound}{statistics.median(confirm_p99):g} ms"
    return note


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Every outbox-relay figure also as a multiple of the naive relay's (same broker)."""
    naive = {(r["workload"], r["broker"]): r for r in rows if r["kind"] == "naive"}
    for row in rows:
        base = naive.get((row["workload"], row["broker"]))
        if row["kind"] != "outbox-relay" or base is None:
            continue
        field = RATE_FIELD.get(row["workload"])
        if field and row.get(field) and base.get(field):
            row["x_naive"] = round(row[field] / base[field], 1)
        elif row["workload"] == "latency" and row.get("p99_ms") and base.get("p99_ms"):
            row["x_naive"] = round(base["p99_ms"] / row["p99_ms"], 1)  # >1: faster


# --- targets ----------------------------------------------------------------------------------


def _find(
    rows: list[dict[str, Any]], workload: str, mode: str, broker: str, kind: str = "outbox-relay"
) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in rows
            if (r["workload"], r["mode"], r["broker"], r["kind"]) == (workload, mode, broker, kind)
        ),
        None,
    )


_LABELS = {"poll": "polling", "cdc": "CDC", "kafka": "Kafka", "rabbitmq": "RabbitMQ"}


def _latency_checks(field: Any) -> list[tuple[str, Any, str, float]]:
    """p99 at 1,000 msg/s: 20 ms polling, 15 ms CDC. The target is commit to broker
    confirm, which the relay's own histogram measures (as the bound of the bucket the
    p99 falls in); arrival at a consumer adds the broker's delivery to consumers."""
    checks: list[tuple[str, Any, str, float]] = []
    for broker in ("kafka", "rabbitmq"):
        for mode, goal in (("poll", 20), ("cdc", 15)):
            where = f"{_LABELS[mode]} -> {_LABELS[broker]} p99 at 1,000 msg/s, ms"
            for until, column in (("confirm", "confirm_p99_ms"), ("consumer", "p99_ms")):
                measured = field("latency", mode, broker, column)
                checks.append((f"{where}, commit to {until}", measured, "<=", goal))
    return checks


def _sustained_target(mode: str, broker: str) -> str:
    return f"{_LABELS[mode]} -> {_LABELS[broker]} sustained with writers, msg/s"


def _writer_limited_targets(rows: list[dict[str, Any]]) -> set[str]:
    """The sustained targets a shortfall of which is the writers', not the relay's: in
    most runs the relay kept up with all the writers committed."""
    return {
        _sustained_target(r["mode"], r["broker"])
        for r in rows
        if r["workload"] == "sustained"
        and r["kind"] == "outbox-relay"
        and r.get("relay_short_runs") is not None
        and 2 * r["relay_short_runs"] < r["runs"]
    }


def _targets_beyond_the_writers(rows: list[dict[str, Any]]) -> set[str]:
    """The sustained targets whose goal is above the writers-alone ceiling of this run."""
    ceiling = next(
        (r.get("max_sustained_msg_per_s") for r in rows if r["kind"] == "writers-alone"), None
    )
    if ceiling is None:
        return set()
    return {
        _sustained_target(mode, broker)
        for (mode, broker), goal in SUSTAINED_GOALS.items()
        if ceiling < goal
    }


def targets(rows: list[dict[str, Any]], extras: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it is met: True,
    False, None (not run), WRITER_LIMITED (below the goal, but only because the writers
    could not offer it: not shown either way) or BEYOND_WRITERS (writer-limited, and the goal
    is above what the writers alone committed on this machine)."""
    checks: list[tuple[str, Any, str, float]] = []  # (what, measured, op, target)
    writer_limited = _writer_limited_targets(rows)

    def rate(workload: str, mode: str, broker: str) -> Any:
        row = _find(rows, workload, mode, broker)
        return row.get(RATE_FIELD[workload]) if row else None

    def field(workload: str, mode: str, broker: str, name: str) -> Any:
        row = _find(rows, workload, mode, broker)
        return row.get(name) if row else None

    checks += [
        ("polling -> Kafka drain, msg/s", rate("drain", "poll", "kafka"), ">=", 50_000),
        ("CDC -> Kafka backlog replay, msg/s", rate("drain", "cdc", "kafka"), ">=", 60_000),
        ("polling -> RabbitMQ drain, msg/s", rate("drain", "poll", "rabbitmq"), ">=", 8_000),
        ("CDC -> RabbitMQ drain, msg/s", rate("drain", "cdc", "rabbitmq"), ">=", 8_000),
        *(
            (_sustained_target(mode, broker), rate("sustained", mode, broker), ">=", goal)
            for (mode, broker), goal in SUSTAINED_GOALS.items()
        ),
        *_latency_checks(field),
        (
            "polling relay CPU in the Kafka drain, us/msg",
            field("drain", "poll", "kafka", "cpu_us_per_msg"),
            "<=",
            25,
        ),
        (
            "CDC relay CPU in the Kafka drain, us/msg",
            field("drain", "cdc", "kafka", "cpu_us_per_msg"),
            "<=",
            15,
        ),
        ("peak RSS of any outbox-relay run, MB", extras.get("peak_rss_mb"), "<=", 100),
    ]
    if "rss_growth_mb_over_1m" in extras:
        checks.append(
            ("RSS growth over 1,000,000 messages, MB", extras["rss_growth_mb_over_1m"], "<=", 10)
        )
    if "soak_rate_decay_pct" in extras:
        checks.append(
            (
                "soak: relay rate, last window vs first, % lower",
                extras["soak_rate_decay_pct"],
                "<=",
                5,
            )
        )
    if "soak_cpu_increase_pct" in extras:
        checks.append(
            (
                "soak: relay CPU per message, last window vs first, % higher",
                extras["soak_cpu_increase_pct"],
                "<=",
                10,
            )
        )
    if "soak_final_backlog_seconds" in extras:
        checks.append(
            (
                "soak: backlog at the end, seconds of writes",
                extras["soak_final_backlog_seconds"],
                "<=",
                1,
            )
        )
    out = []
    beyond_writers = _targets_beyond_the_writers(rows)
    for what, measured, op, target in checks:
        met: bool | str | None = (
            None if measured is None else (measured >= target if op == ">=" else measured <= target)
        )
        if met is False and what in writer_limited:  # else the shortfall is the relay's
            met = BEYOND_WRITERS if what in beyond_writers else WRITER_LIMITED
        out.append({"target": what, "measured": measured, "goal": f"{op} {target:,}", "met": met})
    return out


# --- the document of a run ------------------------------------------------------------------


def build_document(
    meta: dict[str, Any], records: list[dict[str, Any]], notes: list[str], extras: dict[str, Any]
) -> dict[str, Any]:
    """A run's results: its records, their medians, the light-traffic and writer tables,
    and the targets (issue 30's, the writer's among them, and the earlier issue's)."""
    summary = summarize(records)
    light = ceiling_report.light_summary(records)
    writer = writer_report.suite_document(records, meta)
    rss = [r.get("peak_rss_mb") for r in records if r["kind"] == "outbox-relay"]
    extras.setdefault("peak_rss_mb", max((v for v in rss if v), default=None))
    document: dict[str, Any] = {
        "meta": meta,
        "summary": summary,
        "light": light,
        "issue30_targets": ceiling_report.verdicts(summary, light, records)
        + writer_report.verdicts(writer),
        "targets": targets(summary, extras),
        "extras": extras,
        "notes": notes,
        "records": records,
    }
    if writer:
        document["writer"] = writer
    return document


def update_docs(path: Path, document: dict[str, Any]) -> None:
    """Both generated blocks of docs/performance.md from one run: the relay-ceiling one
    (drains, light traffic, the targets) and, when the writer workload ran, its table."""
    ceiling_report.update_docs(path, document)
    if document.get("writer"):
        writer_report.update_docs(path, document["writer"])


# --- writing ----------------------------------------------------------------------------------


def write_all(out_dir: Path, tag: str, document: dict[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{tag}.json", out_dir / f"{tag}.md"]
    written[0].write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    written[1].write_text(markdown(document))
    png = latency_png(out_dir / f"{tag}-latency.png", document["records"])
    if png is not None:
        written.append(png)
    return written


def markdown_cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float) and value >= 100:
        return f"{value:,.0f}"
    if isinstance(value, int | float):
        return f"{value:,}"
    return str(value)


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        f"# outbox-relay benchmarks: {meta['tag']}",
        "",
        (
            f"`{meta['command']}` on {meta['machine']}, {meta['started_at']}; relay tree "
            f"{meta['relay_tree']}. Medians of the runs shown; CPU is the relay process's own "
            "utime+stime per message, RSS its VmHWM; latency is COMMIT returning in the writer "
            "→ arrival at a consumer, and in the notes commit → the broker's confirm (the "
            "relay's own histogram: the bound of the bucket its p99 falls in)."
        ),
        "",
    ]
    columns = [
        "workload",
        "kind",
        "mode",
        "broker",
        "runs",
        "msg_per_s",
        "max_sustained_msg_per_s",
        "of_ceiling",
        "cpu_us_per_msg",
        "peak_rss_mb",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "notes",
    ]
    titles = [
        "workload",
        "relay",
        "mode",
        "broker",
        "runs",
        "drain msg/s",
        "sustained msg/s",
        "x ceiling",
        "CPU µs/msg",
        "peak RSS MB",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "notes",
    ]
    lines += ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in document["summary"]:
        lines.append("| " + " | ".join(markdown_cell(row.get(c)) for c in columns) + " |")
    issue30 = ceiling_report.section(document)
    if issue30:
        lines += ["", "## Drains against the ceiling, light traffic, issue 30's targets", "",
                  *issue30]  # fmt: skip
    if document.get("writer"):
        lines += ["", "## What the outbox costs the writer", "",
                  *writer_report.tables(document["writer"])]  # fmt: skip
    if document.get("targets"):
        lines += [
            "", "## The earlier performance issue's targets", "",
            "| target | goal | measured | met |", "|---|---|---|---|",
        ]  # fmt: skip
        for t in document["targets"]:
            measured, met = markdown_cell(t["measured"]), markdown_cell(t["met"])
            lines.append(f"| {t['target']} | {t['goal']} | {measured} | {met} |")
    for note in document.get("notes", []):
        lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def latency_png(path: Path, records: list[dict[str, Any]]) -> Path | None:
    """A CDF of every latency run (log scale), or None without matplotlib (the `bench`
    dependency group)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = [r for r in records if r["workload"] == "latency" and r.get("latencies_ms")]
    if not runs:
        return None
    figure, axis = plt.subplots(figsize=(10, 6))
    cases = sorted({(r["broker"], r["kind"], r["mode"]) for r in runs})
    colors = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-."]
    for record in runs:
        case = (record["broker"], record["kind"], record["mode"])
        values = record["latencies_ms"]
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        first = min(r["run"] for r in runs if (r["broker"], r["kind"], r["mode"]) == case)
        label = f"{case[1]} {case[2]} -> {case[0]}" if record["run"] == first else None
        axis.plot(
            values,
            fractions,
            label=label,
            color=colors(cases.index(case) % 10),
            linestyle=styles[(record["run"] - 1) % len(styles)],
            linewidth=1.2,
        )
    axis.set_xscale("log")
    axis.set_xlabel("commit → consumer latency (ms, log scale)")
    axis.set_ylabel("fraction of messages")
    axis.set_title(
        f"Latency at {runs[0]['rate']:,.0f} msg/s (single-event transactions; line style = run)"
    )
    for q in (0.5, 0.95, 0.99):
        axis.axhline(q, color="grey", linewidth=0.5, linestyle=":")
    axis.grid(True, which="both", linewidth=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
