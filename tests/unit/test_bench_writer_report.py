"""The writer workload's judgements: per-round ratios, the bulk ways against both
row-by-row styles, and a missed target called out of reach only by the same run's
ceiling. docs/performance.md is written from these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import ceiling_report, report
from benchmarks.writer_report import (
    BASELINE,
    BEGIN,
    CEILING,
    END,
    FUNCTION_CEILING,
    RETURNING_CEILING,
    suite_document,
    summarize,
    tables,
    targets,
    update_docs,
    verdicts,
)

INSERT = "INSERT INTO outbox.messages"


def record(round_no: int, way: str, style: str, rate: float, shape: int = 1000) -> dict[str, Any]:
    return {
        "round": round_no, "relay": False, "rows_per_tx": shape, "way": way, "style": style,
        "baseline": way in (BASELINE, CEILING), "rows_per_s": rate,
        "server_us_per_row": 1.0, "client_us_per_row": 1.0,
    }  # fmt: skip


def row(summary: list[dict[str, Any]], way: str, style: str) -> dict[str, Any]:
    return next(r for r in summary if (r["way"], r["style"]) == (way, style))


def test_ratios_are_taken_round_by_round_then_their_median():
    # Round 2 ran at half speed for everyone: its ratio is the same, the rates are not.
    records = [
        record(1, BASELINE, "awaited", 10_000), record(1, INSERT, "awaited", 6_000),
        record(2, BASELINE, "awaited", 5_000), record(2, INSERT, "awaited", 3_000),
        record(3, BASELINE, "awaited", 10_000), record(3, INSERT, "awaited", 7_000),
    ]  # fmt: skip
    assert row(summarize(records), INSERT, "awaited")["x_plain"] == 0.6


def test_a_bulk_way_is_held_against_both_row_by_row_styles():
    records = [
        record(1, BASELINE, "awaited", 10_000),
        record(1, BASELINE, "pipelined", 25_000),
        record(1, "relay.enqueue_many()", "bulk", 30_000),
    ]
    bulk = row(summarize(records), "relay.enqueue_many()", "bulk")
    assert (bulk["x_plain"], bulk["x_plain_pipelined"]) == (3.0, 1.2)
    found = [t for t in targets(summarize(records)) if "enqueue_many" in t["target"]]
    assert [t["measured"] for t in found] == [3.0, 1.2] and all(t["met"] for t in found)
    document = {"summary": summarize(records), "targets": targets(summarize(records))}
    assert "| 30,000 (3.00x; 1.20x pipelined) |" in "\n".join(tables(document))


@pytest.mark.parametrize(("ceiling", "out_of_reach"), [(7_000, True), (9_000, False)])
def test_a_miss_is_out_of_reach_only_when_the_ceiling_misses_too(ceiling, out_of_reach):
    records = [
        record(1, BASELINE, "awaited", 10_000),
        record(1, CEILING, "awaited", ceiling),
        record(1, INSERT, "awaited", 6_000),
    ]
    (found,) = [t for t in targets(summarize(records)) if t["target"].startswith(INSERT)]
    assert not found["met"] and found["out_of_reach"] == out_of_reach
    assert found["ceiling"] == ceiling / 10_000


def test_the_docs_get_the_table_between_their_markers_and_nothing_else(tmp_path: Path):
    records = [
        record(1, BASELINE, s, 10_000, n) for s in ("awaited", "pipelined") for n in (1000, 1)
    ]
    records.append(record(1, INSERT, "awaited", 5_000))
    document = {
        "meta": {"command": "c", "tree": "t", "started_at": "s", "machine": "m"},
        "summary": summarize(records),
    }
    docs = tmp_path / "performance.md"
    docs.write_text(f"# Before\n\n{BEGIN}\nold table\n{END}\n\nAfter.\n")
    update_docs(docs, document)
    text = docs.read_text()
    assert text.startswith(f"# Before\n\n{BEGIN}\n") and text.endswith(f"{END}\n\nAfter.\n")
    assert "old table" not in text
    assert f"| {INSERT} | 0.50x / — | — / — | — | — |" in text


# --- the writer workload in the suite (benchmarks.run) ------------------------------------


def suite_record(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"workload": "writer", "kind": "outbox-relay", "mode": "poll", "broker": "kafka",
            "run": 1, "machine_busy_pct": 80.0, "started_at": "w0", "finished_at": "w1",
            "measurements": measurements}  # fmt: skip


SUITE_META = {"tag": "quick", "command": "python -m benchmarks.run --quick", "machine": "m",
              "relay_tree": "abc1234", "started_at": "t0"}  # fmt: skip


def writer_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    writer = suite_document([suite_record(records)], SUITE_META)
    assert writer is not None
    return writer


def suite_row(found: list[dict[str, Any]], start: str) -> dict[str, Any]:
    (row,) = [t for t in found if t["target"].startswith(start)]
    return row


@pytest.mark.parametrize(
    ("ceiling", "met"), [(7_600, "out of reach: ceiling 0.76x"), (9_000, False)]
)
def test_a_missed_writer_target_says_in_the_suite_whether_the_ceiling_misses_it_too(ceiling, met):
    writer = writer_of([
        record(1, BASELINE, "awaited", 10_000),
        record(1, CEILING, "awaited", ceiling),
        record(1, INSERT, "awaited", 6_000),
    ])  # fmt: skip
    row = suite_row(verdicts(writer), f"writer: {INSERT}, 1,000 rows/tx")
    assert (row["goal"], row["measured"], row["met"]) == (">= 0.8", "0.60", met)
    shown = "\n".join(ceiling_report.verdict_table(verdicts(writer)))
    assert ("| out of reach: ceiling 0.76x |" in shown) == (met is not False)
    assert ("| **NO** |" in shown) == (met is False)


def test_every_way_at_one_row_is_held_against_the_awaited_ceiling_bulk_ways_too():
    writer = writer_of([
        record(1, BASELINE, "awaited", 1_000, shape=1),
        record(1, CEILING, "awaited", 830, shape=1),
        record(1, "SELECT outbox.enqueue_many()", "bulk", 750, shape=1),
        record(1, "relay.enqueue()", "awaited", 900, shape=1),
    ])  # fmt: skip
    found = verdicts(writer)
    bulk = suite_row(found, "writer: SELECT outbox.enqueue_many(), 1 row/tx")
    assert (bulk["goal"], bulk["met"]) == (">= 0.85", "out of reach: ceiling 0.83x")
    assert suite_row(found, "writer: relay.enqueue(), 1 row/tx")["met"] is True


@pytest.mark.parametrize(("arrays", "met"), [(900, "out of reach: ceiling 0.81x"), (None, False)])
def test_a_way_that_sends_arrays_is_held_at_one_row_against_what_arrays_cost(arrays, met):
    """The SQL enqueue_many() of one row: the ceiling table's 0.90x times the 0.90x a
    plain table's INSERT ... unnest of one row gets in the same run, 0.81x, rules out the
    goal of 0.85x; without that figure, the ceiling table's alone does not (a plain NO).
    relay.enqueue_many() sends one row as a row, so its ceiling stays the table's."""
    records = [
        record(1, BASELINE, "awaited", 1_000, shape=1),
        record(1, CEILING, "awaited", 900, shape=1),
        record(1, "SELECT outbox.enqueue_many()", "bulk", 780, shape=1),
        record(1, "relay.enqueue_many()", "bulk", 800, shape=1),
    ]
    if arrays:
        records.append({**record(1, "plain INSERT ... unnest", "bulk", arrays, shape=1),
                        "baseline": True})  # fmt: skip
    found = verdicts(writer_of(records))
    assert suite_row(found, "writer: SELECT outbox.enqueue_many(), 1 row/tx")["met"] == met
    assert suite_row(found, "writer: relay.enqueue_many(), 1 row/tx")["met"] is False


@pytest.mark.parametrize(("in_function", "met"), [(480, "out of reach: ceiling 0.48x"),
                                                   (None, False)])  # fmt: skip
def test_a_function_called_per_row_is_held_against_the_ceiling_in_a_function(in_function, met):
    """SELECT outbox.enqueue() at 0.46x misses 0.5x where the ceiling table's INSERT gets
    0.60x; the same INSERT in the cheapest function gets 0.48x in the same run, which
    rules the goal out. Without that figure it is a plain NO. The direct INSERT stays
    held against the table's own ceiling."""
    records = [
        record(1, BASELINE, "awaited", 1_000),
        record(1, CEILING, "awaited", 600),
        record(1, "SELECT outbox.enqueue()", "awaited", 460),
        record(1, INSERT, "awaited", 550),
    ]
    if in_function:
        records.append({**record(1, FUNCTION_CEILING, "awaited", in_function), "baseline": True})
    found = verdicts(writer_of(records))
    assert suite_row(found, "writer: SELECT outbox.enqueue(), 1,000 rows/tx")["met"] == met
    direct = suite_row(found, f"writer: {INSERT}, 1,000 rows/tx")
    assert direct["met"] == "out of reach: ceiling 0.60x"


@pytest.mark.parametrize(("returning", "met"), [(820, "out of reach: ceiling 0.82x"),
                                                 (None, False)])  # fmt: skip
def test_a_call_that_returns_the_id_is_held_against_the_insert_returning_it(returning, met):
    """relay.enqueue() of one row a transaction at 0.80x misses 0.85x where the ceiling
    table's INSERT gets 0.88x; the same INSERT with its id read back gets 0.82x in the
    same run, which rules the goal out. Without that figure it is a plain NO. The
    direct INSERT, which returns nothing, stays held against the table's own ceiling."""
    records = [
        record(1, BASELINE, "awaited", 1_000, shape=1),
        record(1, CEILING, "awaited", 880, shape=1),
        record(1, "relay.enqueue()", "awaited", 800, shape=1),
        record(1, INSERT, "awaited", 840, shape=1),
    ]
    if returning:
        records.append({**record(1, RETURNING_CEILING, "awaited", returning, shape=1),
                        "baseline": True})  # fmt: skip
    found = verdicts(writer_of(records))
    assert suite_row(found, "writer: relay.enqueue(), 1 row/tx")["met"] == met
    assert suite_row(found, f"writer: {INSERT}, 1 row/tx")["met"] is False


def test_the_suite_rows_pair_no_relay_with_a_relay_running_in_the_issues_style_only():
    relay_on = [
        dict(r, relay=True)
        for r in (
            record(1, BASELINE, "awaited", 10_000),
            record(1, CEILING, "awaited", 9_000),
            record(1, INSERT, "awaited", 7_000),
        )
    ]
    writer = writer_of([
        record(1, BASELINE, "awaited", 10_000), record(1, BASELINE, "pipelined", 40_000),
        record(1, CEILING, "awaited", 7_600), record(1, CEILING, "pipelined", 20_000),
        record(1, INSERT, "awaited", 8_500), record(1, INSERT, "pipelined", 10_000),
        *relay_on,
    ])  # fmt: skip
    found = verdicts(writer)
    assert [t["target"] for t in found if "pipelined" in t["target"]] == []
    row = suite_row(found, f"writer: {INSERT}, 1,000 rows/tx")
    assert row["target"].endswith("no relay / a relay running")
    # Met without a relay; with one, missed where the ceiling (0.90x) was not: NO.
    assert (row["measured"], row["met"]) == ("0.85 / 0.70", False)


def test_the_suite_document_takes_the_writer_record_and_the_runs_meta():
    records = [record(1, BASELINE, "awaited", 10_000), record(1, INSERT, "awaited", 9_000)]
    writer = writer_of(records)
    assert writer["meta"]["tree"] == "abc1234" and writer["meta"]["machine_busy_pct"] == 80.0
    assert writer["meta"]["started_at"] == "w0"
    assert row(writer["summary"], INSERT, "awaited")["x_plain"] == 0.9
    assert suite_document([{"workload": "drain", "kind": "outbox-relay"}], SUITE_META) is None
    assert verdicts(None) == []


def test_one_run_of_the_suite_writes_both_blocks_of_the_docs(tmp_path: Path):
    measurements = [
        record(1, BASELINE, s, 10_000, n) for s in ("awaited", "pipelined") for n in (1000, 1)
    ]
    measurements += [record(1, INSERT, "awaited", 5_000), record(1, CEILING, "awaited", 7_000)]
    document = report.build_document(dict(SUITE_META), [suite_record(measurements)], [], {})
    docs = tmp_path / "performance.md"
    docs.write_text(
        f"# P\n\n{ceiling_report.BEGIN}\nold drains\n{ceiling_report.END}\n\n"
        f"## Writes\n\n{BEGIN}\nold writer table\n{END}\n\nAfter.\n"
    )
    report.update_docs(docs, document)
    text = docs.read_text()
    assert "old drains" not in text and "old writer table" not in text
    drains = text.split(ceiling_report.BEGIN)[1].split(ceiling_report.END)[0]
    assert (
        f"| writer: {INSERT}, 1,000 rows/tx: rows/s x a plain INSERT's, row by row (awaited); "
        "no relay | >= 0.8 | 0.50 | out of reach: ceiling 0.70x |"
    ) in drains
    writes = text.split(BEGIN)[1].split(END)[0]
    assert writes.startswith("\n`python -m benchmarks.run --quick`, tree abc1234")
    assert f"| {INSERT} | 0.50x / — | — / — | — | — |" in writes
    assert "## What the outbox costs the writer" in report.markdown(document)
