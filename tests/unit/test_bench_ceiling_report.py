"""Issue 30's relay report: drains against the ceiling, light traffic, the verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import ceiling_report, report


def record(workload: str, kind: str, mode: str, broker: str, **figures: Any) -> dict[str, Any]:
    return {"workload": workload, "kind": kind, "mode": mode, "broker": broker, "run": 1,
            **figures}  # fmt: skip


def drains(poll: float, cdc: float) -> list[dict[str, Any]]:
    return [
        record("ceiling", "pg-claim+update", "none", "none", msg_per_s=80_000,
               msg_per_s_from_start=80_000, messages=100_000),
        record("ceiling", "pg-claim+delete", "none", "none", msg_per_s=100_000,
               msg_per_s_from_start=100_000, messages=100_000),
        record("drain", "outbox-relay", "poll", "kafka", msg_per_s=60_000,
               msg_per_s_from_start=poll, messages=100_000, complete=True),
        record("drain", "outbox-relay", "cdc", "kafka", msg_per_s=40_000,
               msg_per_s_from_start=cdc, messages=100_000, complete=True),
        record("drain", "tutorial", "poll", "kafka", msg_per_s=30_000,
               msg_per_s_from_start=28_000, messages=100_000, complete=True),
    ]  # fmt: skip


def light(mode: str, rate: float, **figures: Any) -> dict[str, Any]:
    return record("light", "outbox-relay", mode, "kafka", rate=rate, **figures)


def met(found: list[dict[str, Any]], start: str) -> Any:
    return next(t["met"] for t in found if t["target"].startswith(start))


def measured(found: list[dict[str, Any]], start: str) -> Any:
    return next(t["measured"] for t in found if t["target"].startswith(start))


def test_every_drain_is_a_fraction_of_the_claim_and_update_ceiling_from_its_start() -> None:
    rows = report.summarize(drains(poll=56_000, cdc=32_000))
    by = {(r["workload"], r["kind"], r["mode"]): r for r in rows}
    assert by[("drain", "outbox-relay", "poll")]["of_ceiling"] == 0.7  # 56,000 / 80,000
    assert by[("drain", "outbox-relay", "cdc")]["of_ceiling"] == 0.4
    assert by[("drain", "tutorial", "poll")]["of_ceiling"] == 0.35  # not its 30,000 first-last
    assert by[("ceiling", "pg-claim+delete", "none")]["of_ceiling"] == 1.25
    # and against the claim+delete ceiling (100,000), what outbox-relay does by default
    assert by[("drain", "outbox-relay", "poll")]["of_delete_ceiling"] == 0.56


def test_without_a_ceiling_no_drain_gets_a_fraction() -> None:
    rows = report.summarize(drains(poll=56_000, cdc=32_000)[2:])
    assert all("of_ceiling" not in r for r in rows)


def test_the_drain_verdicts_sit_at_0_7_polling_and_0_6_cdc() -> None:
    rows = report.summarize(drains(poll=56_000, cdc=47_900))
    found = ceiling_report.verdicts(rows, [], [])
    assert met(found, "polling -> Kafka drain of 100,000") is True  # exactly 0.7
    assert met(found, "CDC -> Kafka replay") is False  # 0.59875: not 0.6 by rounding
    rows = report.summarize(drains(poll=55_900, cdc=48_000))
    found = ceiling_report.verdicts(rows, [], [])
    assert met(found, "polling -> Kafka drain") is False
    assert met(found, "CDC -> Kafka replay") is True


def test_light_traffic_is_summarized_per_rate_and_p50_is_held_against_the_same_runs_bare() -> None:
    records = [
        light("poll", 0, relay_cpu_pct_of_core=0.4),
        light("poll", 100, cpu_us_per_msg=590.0, p50_ms=20.0, bare_p50_ms=12.5),
        {**light("poll", 100, cpu_us_per_msg=700.0, p50_ms=30.0, bare_p50_ms=21.0), "run": 2},
        {**light("poll", 100, cpu_us_per_msg=500.0, p50_ms=40.0, bare_p50_ms=36.0), "run": 3},
        light("cdc", 0, relay_cpu_pct_of_core=2.5),
        light("cdc", 100, cpu_us_per_msg=601.0, p50_ms=30.0, bare_p50_ms=21.0),
    ]
    rows = ceiling_report.light_summary(records)
    poll = next(r for r in rows if (r["mode"], r["rate"]) == ("poll", 100.0))
    assert poll["runs"] == 3 and poll["cpu_us_per_msg"] == 590.0
    # per run 7.5, 9.0, 4.0: the median of the differences (7.5), not the difference of
    # the medians (30 - 21 = 9)
    assert poll["p50_over_bare_ms"] == 7.5
    found = ceiling_report.verdicts([], rows, records)
    assert met(found, "polling relay CPU at 100 msg/s") is True
    assert met(found, "CDC relay CPU at 100 msg/s") is False
    assert met(found, "polling relay idle") is True
    assert met(found, "CDC relay idle") is False
    assert met(found, "polling p50") is True
    assert met(found, "CDC p50") is False  # 9.0 ms above the bare producer
    assert measured(found, "CDC p50") == 9.0


def test_the_minimal_relay_has_rows_of_its_own_and_no_say_in_a_verdict_it_meets() -> None:
    records = [
        light("poll", 100, cpu_us_per_msg=1_100.0, p50_ms=4.0, bare_p50_ms=3.5),
        {**light("poll", 100, cpu_us_per_msg=480.0, p50_ms=3.0, bare_p50_ms=3.5),
         "kind": "minimal"},
    ]  # fmt: skip
    rows = ceiling_report.light_summary(records)
    assert [r["kind"] for r in rows] == ["outbox-relay", "minimal"]
    table = "\n".join(ceiling_report.light_table(rows))
    label = "minimal relay, the ceiling (librdkafka defaults, flush)"
    assert f"| {label} | polling | 100 | 480 |" in table
    found = ceiling_report.verdicts([], rows, records)
    assert measured(found, "polling relay CPU at 100 msg/s") == 1_100.0
    assert met(found, "polling relay CPU at 100 msg/s") is False  # 480 meets the goal


def test_a_polling_cpu_miss_that_every_minimal_relay_of_the_run_misses_too_is_out_of_reach() -> (
    None
):
    records = [
        light("poll", 100, cpu_us_per_msg=1_300.0, p50_ms=4.0, bare_p50_ms=3.5),
        light("cdc", 100, cpu_us_per_msg=1_200.0, p50_ms=4.0, bare_p50_ms=3.5),
        {**light("poll", 100, cpu_us_per_msg=908.0), "kind": "minimal-relay-kafka-thread"},
        {**light("poll", 100, cpu_us_per_msg=1_033.0), "kind": "minimal-relay-kafka"},
    ]
    found = ceiling_report.verdicts([], ceiling_report.light_summary(records), records)
    assert (
        met(found, "polling relay CPU at 100 msg/s")
        == "out of reach: minimal relay 908 (ours 1.43x)"
    )
    assert met(found, "CDC relay CPU at 100 msg/s") is False  # no minimal CDC relay to say so
    shown = "\n".join(ceiling_report.verdict_table(found))
    assert "| 1,300 | out of reach: minimal relay 908 (ours 1.43x) |" in shown


def test_a_cdc_cpu_miss_is_out_of_reach_only_below_the_minimal_cdc_relay_of_the_run() -> None:
    records = [
        light("poll", 100, cpu_us_per_msg=1_300.0),
        light("cdc", 100, cpu_us_per_msg=1_200.0),
        {**light("poll", 100, cpu_us_per_msg=500.0), "kind": "minimal"},  # polls: no say
        {**light("cdc", 100, cpu_us_per_msg=750.0), "kind": "minimal-cdc"},
    ]
    rows = ceiling_report.light_summary(records)
    found = ceiling_report.verdicts([], rows, records)
    cdc = met(found, "CDC relay CPU at 100 msg/s")
    assert cdc == "out of reach: minimal relay 750 (ours 1.60x)"
    assert met(found, "polling relay CPU at 100 msg/s") is False  # its minimal relay met it
    label = "minimal CDC relay, the ceiling (librdkafka defaults, flush)"
    assert f"| {label} | CDC | 100 | 750 |" in "\n".join(ceiling_report.light_table(rows))


def test_a_target_not_measured_is_neither_met_nor_missed() -> None:
    found = ceiling_report.verdicts([], [], [])
    assert {t["met"] for t in found} == {None}
    assert len(found) == 8  # two drains, and CPU, idle and p50 in each mode


def test_sustained_runs_say_if_the_relay_kept_up_with_all_the_writers_committed() -> None:
    records = [
        record("sustained", "outbox-relay", "poll", "kafka", max_sustained_msg_per_s=19_030,
               failed_msg_per_s=None),
        record("sustained", "outbox-relay", "cdc", "kafka", max_sustained_msg_per_s=15_000,
               failed_msg_per_s=17_200),
        {**record("sustained", "outbox-relay", "cdc", "kafka", max_sustained_msg_per_s=16_000,
                  failed_msg_per_s=None), "run": 2},
    ]  # fmt: skip
    found = ceiling_report.verdicts([], [], records)
    assert met(found, "polling -> Kafka sustained") is True
    assert measured(found, "polling -> Kafka sustained") == "yes, up to 19,030 msg/s"
    assert met(found, "CDC -> Kafka sustained") is False
    assert measured(found, "CDC -> Kafka sustained") == "fell behind at 17,200 msg/s (1 of 2 runs)"


def document() -> dict[str, Any]:
    records = [*drains(poll=50_000, cdc=30_000), light("poll", 0, relay_cpu_pct_of_core=0.5)]
    summary = report.summarize(records)
    lights = ceiling_report.light_summary(records)
    return {
        "meta": {"command": "python -m benchmarks.run X", "relay_tree": "abc1234",
                 "started_at": "t0", "finished_at": "t1", "machine": "2 CPUs",
                 "loadavg_at_start": [1.5, 1.0, 1.0]},
        "summary": summary, "light": lights,
        "issue30_targets": ceiling_report.verdicts(summary, lights, records),
    }  # fmt: skip


def test_the_docs_table_goes_between_the_markers_and_nothing_else_changes(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    begin, end = ceiling_report.BEGIN, ceiling_report.END
    page.write_text(f"# P\n\nabove\n\n{begin}\nold table\n{end}\n\nbelow\n")
    ceiling_report.update_docs(page, document())
    text = page.read_text()
    assert text.startswith("# P\n\nabove\n\n") and text.endswith("\n\nbelow\n")
    inside = text.split(ceiling_report.BEGIN)[1].split(ceiling_report.END)[0]
    assert "old table" not in inside
    assert "`python -m benchmarks.run X`, relay tree abc1234" in inside
    ceiling = "| PostgreSQL alone: claim 1,000 + UPDATE, commit (the ceiling) | 80,000 | 1.00 |"
    assert ceiling in inside
    assert "| PostgreSQL alone: claim 1,000 + DELETE, commit | 100,000 | 1.25 |" in inside
    assert "| outbox-relay, polling -> Kafka | 50,000 | 0.62 | 0.50 |" in inside
    assert "| outbox-relay | polling | idle | — | 0.5 |" in inside
    verdict = "from start, x the claim+update ceiling | >= 0.7 | 0.625 | **NO** |"
    assert f"| polling -> Kafka drain of 100,000, {verdict}" in inside


def test_a_page_without_the_markers_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text("# P\n")
    with pytest.raises(SystemExit):
        ceiling_report.update_docs(page, document())
    assert page.read_text() == "# P\n"
