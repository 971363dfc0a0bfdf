"""The writer workload's report: medians, ratios, issue 30's targets, the Markdown.

    python -m benchmarks.writer_report results/writers.json [--update-docs docs/performance.md]

prints the report of a saved run (of ``benchmarks.writer_cost``, or of ``benchmarks.run``
with its writer workload) again and, with ``--update-docs``, writes its table into the file
between the ``<!-- writer-cost:begin -->`` and ``<!-- writer-cost:end -->`` lines.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path
from typing import Any

import orjson

from benchmarks.docs_page import fill_between

BASELINE = "plain INSERT"
CEILING = "ceiling: every promise, no more"
# Issue 30's targets: (way, style, rows per transaction, goal). Row-by-row ways are held
# against the plain INSERT of their style; bulk ways against both row-by-row styles.
TARGETS: tuple[tuple[str, str, int, float], ...] = (
    ("INSERT INTO outbox.messages", "awaited", 1000, 0.8),
    ("INSERT INTO outbox.messages", "pipelined", 1000, 0.8),
    ("INSERT INTO outbox.messages", "unprepared", 1000, 0.8),
    ("SELECT outbox.enqueue()", "awaited", 1000, 0.5),
    ("SELECT outbox.enqueue()", "pipelined", 1000, 0.5),
    ("relay.enqueue()", "awaited", 1000, 0.8),
    ("relay.enqueue_many()", "bulk", 1000, 1.0),
    ("SELECT outbox.enqueue_many()", "bulk", 1000, 1.0),
)
ONE_ROW_GOAL = 0.85
# A way that sends its rows as arrays pays for that however few rows it sends: psycopg
# builds a dumper for each list, and the server unpacks the arrays (benchmarks/README.md).
# At 1 row/tx its ceiling is the ceiling table's ratio times what arrays cost a plain
# table in the same run (the plain INSERT ... unnest of that one row).
ARRAY_WAYS = {"SELECT outbox.enqueue_many()": "plain INSERT ... unnest"}
# A way that calls a function once per row is held against the ceiling table's INSERT in
# the cheapest such function (benchmarks/writer_ways.py), not against the bare INSERT.
FUNCTION_CEILING = "ceiling: every promise, in a function"
FUNCTION_WAYS = ("SELECT outbox.enqueue()",)
# A Python call that returns the new id is held against the ceiling table's INSERT ...
# RETURNING id, its id read back: the round trip carries a row, and psycopg makes a UUID.
RETURNING_CEILING = "ceiling: every promise, returning the id"
RETURNING_WAYS = ("relay.enqueue()", "relay.enqueue_many()")
WORKLOAD = "writer"  # its name in benchmarks.run's --workloads and records


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
    """Issue 30's writer targets, each with and without a relay. A target missed where the
    ceiling of the same run is below the goal too is out of reach. At 1,000 rows/tx a bulk
    way has no ceiling (the ceiling is a row-by-row INSERT); at 1 row/tx every way is
    held against the awaited plain INSERT, and so against the awaited ceiling (times
    the cost of arrays, for a way that sends them)."""
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
            versus = _versus(style, field)
            ceiling = _ceiling(summary, way, versus, relay_on, shape)
            if style == "bulk" and shape > 1:
                ceiling = None
            found.append({
                "target": f"{way} ({style}), {shape:,} rows/tx, "
                          f"{'a relay running' if relay_on else 'no relay'}"
                          + (" vs pipelined" if field == "x_plain_pipelined" else ""),
                "way": way, "style": style, "rows_per_tx": shape, "relay": relay_on,
                "versus": versus, "goal": goal, "measured": row[field],
                "ceiling": ceiling,
            })  # fmt: skip
    for t in found:
        t["met"] = t["measured"] >= t["goal"]
        t["out_of_reach"] = not t["met"] and t["ceiling"] is not None and t["ceiling"] < t["goal"]
    return found


def _ceiling(
    summary: list[dict[str, Any]], way: str, versus: str, relay: bool, shape: int
) -> float | None:
    """The same run's ceiling for ``way``: the ceiling table's ratio, and for a way that
    sends arrays, times what arrays cost a plain table (ARRAY_WAYS) at 1 row/tx; for a
    way that calls a function per row, the same INSERT in a function (FUNCTION_WAYS);
    for one that returns the new id, the INSERT returning it (RETURNING_WAYS). A run
    without that way's own ceiling falls back to the ceiling table's."""
    own = _find(summary, _ceiling_way(way), versus, relay, shape)
    ceiling = own if own is not None else _find(summary, CEILING, versus, relay, shape)
    if ceiling is None or ceiling["x_plain"] is None:
        return None
    floor = _find(summary, ARRAY_WAYS.get(way, ""), "bulk", relay, shape) if shape == 1 else None
    if floor is None or floor["x_plain"] is None:
        return float(ceiling["x_plain"])
    return round(float(ceiling["x_plain"]) * float(floor["x_plain"]), 2)


def _ceiling_way(way: str) -> str:
    if way in FUNCTION_WAYS:
        return FUNCTION_CEILING
    return RETURNING_CEILING if way in RETURNING_WAYS else CEILING


def _versus(style: str, field: str) -> str:
    """The style of the plain INSERT a way's ratio is taken against."""
    if field == "x_plain_pipelined":
        return "pipelined"
    return "awaited" if style == "bulk" else style


def verdicts(writer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The writer targets as rows of the suite's table of issue 30's targets (see
    ceiling_report.verdicts): {target, goal, measured, met}, one row per way and
    transaction size, "no relay / a relay running" side by side. Only the comparison the
    issue set its goals in: against a plain INSERT awaited row by row (what application
    code does); the pipelined and unprepared figures stay in the writer table. A miss the
    same run's ceiling misses too reads "out of reach" with the ceiling's figure, not NO."""
    pairs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for t in writer["targets"] if writer else []:
        if t["versus"] == "awaited":
            pairs.setdefault((t["way"], t["style"], t["rows_per_tx"]), []).append(t)
    return [_verdict(way, style, shape, found) for (way, style, shape), found in pairs.items()]


def _verdict(way: str, style: str, shape: int, found: list[dict[str, Any]]) -> dict[str, Any]:
    found = sorted(found, key=lambda t: t["relay"])  # no relay first
    size = f"{shape:,} row{'s' if shape > 1 else ''}/tx"
    call = " in one call" if style == "bulk" and shape > 1 else ""
    cases = " / ".join("a relay running" if t["relay"] else "no relay" for t in found)
    met: bool | str = all(t["met"] for t in found)
    if not met and all(t["met"] or t["out_of_reach"] for t in found):
        ceilings = " / ".join(f"{t['ceiling']:.2f}x" for t in found if t["ceiling"] is not None)
        met = f"out of reach: ceiling {ceilings}"
    return {
        "target": f"writer: {way}{call}, {size}: rows/s x a plain INSERT's, row by row "
        f"(awaited); {cases}",
        "goal": f">= {found[0]['goal']:g}",
        "measured": " / ".join(f"{t['measured']:.2f}" for t in found),
        "met": met,
    }


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        f"# What the outbox costs the writer: {meta['tag']}",
        "",
        f"`{meta['command']}` on {meta['machine']}, {meta['started_at']} to "
        f"{meta.get('finished_at')}; tree {meta['tree']}; cores busy "
        f"{meta.get('machine_busy_pct')} %, stolen {meta.get('machine_steal_pct')} %.",
        "",
        *tables(document),
    ]
    return "\n".join([*lines, *_server_lines(document.get("server"))]) + "\n"


def tables(document: dict[str, Any]) -> list[str]:
    """The rates, the CPU per row and the targets of a run, as Markdown lines."""
    lines = [
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
    return lines


def suite_document(records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any] | None:
    """The writer workload of a ``benchmarks.run`` invocation as a document of this module
    (meta, summary, targets), or None when it did not run. ``records`` are the suite's:
    the workload is one record whose ``measurements`` are writer_cost's records."""
    run = next((r for r in reversed(records) if r["workload"] == WORKLOAD), None)
    if run is None:
        return None
    summary = summarize(run["measurements"])
    return {
        "meta": {
            "tag": meta["tag"], "command": meta["command"], "machine": meta["machine"],
            "tree": meta["relay_tree"], "started_at": run.get("started_at", meta["started_at"]),
            "finished_at": run.get("finished_at"),
            "machine_busy_pct": run.get("machine_busy_pct"),
            "machine_steal_pct": run.get("machine_steal_pct"),
        },
        "summary": summary,
        "targets": targets(summary),
    }  # fmt: skip


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
            cells.append("—" if row is None else _cell(row))
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


# --- the table of docs/performance.md ------------------------------------------------------

BEGIN, END = "<!-- writer-cost:begin -->", "<!-- writer-cost:end -->"
DOC_WAYS = (  # way, style of the first figure, of the second (None: one figure), label
    ("tutorial outbox INSERT", "awaited", "pipelined", ""),
    (CEILING, "awaited", "pipelined", ""),
    (RETURNING_CEILING, "awaited", None, ""),
    (FUNCTION_CEILING, "awaited", "pipelined", ""),
    ("INSERT INTO outbox.messages", "awaited", "pipelined", ""),
    ("INSERT INTO outbox.messages", "unprepared", None, ", not prepared"),
    ("SELECT outbox.enqueue()", "awaited", "pipelined", ""),
    ("relay.enqueue()", "awaited", None, ""),
    ("relay.enqueue_many()", "bulk", "bulk", ""),
    ("SELECT outbox.enqueue_many()", "bulk", "bulk", ""),
)


def _ratio(row: dict[str, Any] | None, field: str = "x_plain") -> str:
    value = None if row is None else row.get(field)
    return "—" if value is None else f"{value:.2f}x"


def docs_table(document: dict[str, Any]) -> list[str]:
    """One line per way: its ratio to a plain INSERT awaited / pipelined (bulk ways: the
    whole list in one call against each row-by-row style), in each case."""
    summary, meta = document["summary"], document["meta"]
    lines = [
        f"`{meta['command']}`, tree {meta['tree']}, {meta['started_at']} "
        f"({meta['machine']}; cores busy {meta.get('machine_busy_pct')} %). Rows/s of "
        "the way over a plain INSERT's, median of the rounds; *awaited / pipelined*.",
        "",
        "| way | 1,000 rows/tx | relay running | 1 row/tx | relay running |",
        "|---|---:|---:|---:|---:|",
    ]
    for way, first, second, label in DOC_WAYS:
        cells = []
        for shape, relay_on in ((1000, False), (1000, True), (1, False), (1, True)):
            row = _find(summary, way, first, relay_on, shape)
            if shape == 1 or second is None:
                cells.append(_ratio(row))
            elif second == "bulk":
                cells.append(f"{_ratio(row)} / {_ratio(row, 'x_plain_pipelined')}")
            else:
                cells.append(
                    f"{_ratio(row)} / {_ratio(_find(summary, way, second, relay_on, shape))}"
                )
        lines.append(f"| {way}{label} | " + " | ".join(cells) + " |")
    plain = _find(summary, BASELINE, "awaited", False, 1000)
    piped = _find(summary, BASELINE, "pipelined", False, 1000)
    one = _find(summary, BASELINE, "awaited", False, 1)
    if plain and piped and one:
        lines += ["", f"The plain INSERT itself, no relay: {plain['rows_per_s']:,.0f} rows/s "
                  f"awaited and {piped['rows_per_s']:,.0f} pipelined at 1,000 rows/tx, "
                  f"{one['rows_per_s']:,.0f} at 1 row/tx."]  # fmt: skip
    return lines


def update_docs(path: Path, document: dict[str, Any]) -> None:
    """Replace the lines between the markers of ``path`` with this run's table."""
    fill_between(path, BEGIN, END, docs_table(document))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results", type=Path, help="a results/<tag>.json of writer_cost or of benchmarks.run"
    )
    parser.add_argument("--update-docs", type=Path, metavar="MD")
    args = parser.parse_args()
    saved = orjson.loads(args.results.read_bytes())
    document = saved.get("writer", saved)  # the suite keeps the workload under "writer"
    print(markdown(document))
    if args.update_docs:
        update_docs(args.update_docs, document)
        print(f"updated {args.update_docs}")


if __name__ == "__main__":
    main()
