"""The benchmark suite's own judgements: which rates a sustained run offers, when a step
counts as kept up at its offered rate, and how the report reads the targets from them.

The README's figures come from these decisions, so they are tested like the relay is.
"""

from __future__ import annotations

from typing import Any

from benchmarks import report
from benchmarks.ramp import Ramp, StepResult, bisect_rate, step_verdict
from benchmarks.workloads import Case, sustained_rates

QUICK_RAMP = (0.3, 0.5, 0.75, 1.0)


def test_a_sustained_run_offers_the_targets_own_rate() -> None:
    # A RabbitMQ drain of ~15,000/s made the quick ramp step from 7,600 straight to 11,400.
    rates = sustained_rates(QUICK_RAMP, Case("outbox-relay", "poll", "rabbitmq"), 15_168.0)
    assert rates == [4_600.0, 7_600.0, 8_000.0, 11_400.0, 15_200.0]
    cdc_kafka = sustained_rates(QUICK_RAMP, Case("outbox-relay", "cdc", "kafka"), 53_006.0)
    assert 30_000.0 in cdc_kafka and cdc_kafka == sorted(cdc_kafka)


def test_the_naive_relay_is_offered_its_ramp_only() -> None:
    rates = sustained_rates(QUICK_RAMP, Case("naive", "poll", "kafka"), 2_000.0)
    assert rates == [600.0, 1_000.0, 1_500.0, 2_000.0]


def test_writers_on_pace_count_the_step_at_its_offered_rate() -> None:
    kept_up, writer_limited = step_verdict(8_000, 7_991, backlog_end=40, slope=3.0)
    assert kept_up and not writer_limited


def test_writers_short_of_the_offered_rate_make_the_step_writer_limited() -> None:
    # Offered the 20,000 target, committed 18,500: the figure must not read as 20,000.
    kept_up, writer_limited = step_verdict(20_000, 18_500, backlog_end=300, slope=0.0)
    assert kept_up and writer_limited


def test_the_pace_rule_sits_at_98_percent() -> None:
    assert step_verdict(20_000, 19_700, backlog_end=300, slope=0.0)[1] is False
    assert step_verdict(20_000, 19_500, backlog_end=300, slope=0.0)[1] is True


def test_a_growing_backlog_is_not_kept_up() -> None:
    kept_up, _ = step_verdict(9_000, 9_003, backlog_end=6_000, slope=1_500.0)
    assert not kept_up


def test_bisecting_never_offers_a_rate_already_tried() -> None:
    assert bisect_rate(8_000, 10_100) == [9_000]
    assert bisect_rate(8_000, 8_100) == []  # the half rounds back to 8,000
    assert bisect_rate(0, 1_000) == [500]


def record(kind: str, mode: str, broker: str, **figures: Any) -> dict[str, Any]:
    return {"workload": "sustained", "kind": kind, "mode": mode, "broker": broker, "run": 1,
            **figures}


def test_the_report_judges_every_sustained_target_and_names_the_writers_ceiling() -> None:
    records = [
        record("writers-alone", "none", "none", max_sustained_msg_per_s=28_310,
               machine_busy_pct=82.6),
        record("outbox-relay", "poll", "kafka", max_sustained_msg_per_s=19_030,
               lower_bound=True),
        record("outbox-relay", "cdc", "rabbitmq", max_sustained_msg_per_s=8_000),
    ]
    rows = report.summarize(records)
    ceiling = next(r for r in rows if r["kind"] == "writers-alone")
    assert ceiling["max_sustained_msg_per_s"] == 28_310
    assert "writers' ceiling" in ceiling["notes"] and "82.6 %" in ceiling["notes"]
    judged = {t["target"]: t for t in report.targets(rows, {})}
    polling = judged["polling -> Kafka sustained with writers, msg/s"]
    # below the goal, but the relay kept up with all the writers committed
    assert (polling["measured"], polling["met"]) == (19_030, report.WRITER_LIMITED)
    assert report.markdown_cell(polling["met"]) == "not shown: writer-limited"
    cdc_rabbit = judged["CDC -> RabbitMQ sustained with writers, msg/s"]
    assert (cdc_rabbit["measured"], cdc_rabbit["met"]) == (8_000, True)
    assert judged["CDC -> Kafka sustained with writers, msg/s"]["met"] is None  # not run


def step(rate: float, wrote: float, kept_up: bool = True) -> StepResult:
    limited = step_verdict(rate, wrote, backlog_end=0, slope=0.0)[1]
    return StepResult(rate, wrote, wrote, 0.0, 0, 10.0, 50.0, kept_up, limited)


def walk(ramp: Ramp, outcomes: dict[float, list[tuple[float, bool]]]) -> list[float]:
    """Feed the ramp the outcome scripted for each rate it offers; the rates offered."""
    offered = []
    while (rate := ramp.next_rate()) is not None:
        offered.append(rate)
        wrote, kept_up = outcomes[rate].pop(0)
        ramp.record(step(rate, wrote, kept_up))
    return offered


def test_a_writers_dip_is_offered_again_before_the_run_ends() -> None:
    ramp = Ramp([15_000.0, 20_000.0, 30_000.0], bisect=0)
    outcomes = {15_000.0: [(15_010, True)], 20_000.0: [(18_085, True), (19_950, True)],
                30_000.0: [(24_000, True)]}
    # the second shortfall ends the run: one retry per run bounds its length
    assert walk(ramp, outcomes) == [15_000, 20_000, 20_000, 30_000]
    assert ramp.passed == 24_000  # the writers' best, a lower bound
    best = ramp.best()
    assert best is not None and best.writer_limited and best.reached == 24_000


def test_the_retry_is_spent_once() -> None:
    ramp = Ramp([20_000.0, 30_000.0], bisect=0)
    outcomes = {20_000.0: [(18_085, True), (18_500, True)], 30_000.0: []}
    assert walk(ramp, outcomes) == [20_000, 20_000]
    assert ramp.passed == 18_500


def test_a_writer_limited_failure_counts_at_the_rate_the_writers_reached() -> None:
    # Offered 10,100, the writers committed 9,200 and the relay fell behind: the relay
    # failed at 9,200, so bisection looks between 8,000 and 9,200, not 10,100.
    ramp = Ramp([8_000.0, 10_100.0], bisect=1)
    outcomes = {8_000.0: [(8_003, True)], 10_100.0: [(9_200, False)], 8_600.0: [(8_590, True)]}
    assert walk(ramp, outcomes) == [8_000, 10_100, 8_600]
    assert (ramp.passed, ramp.failed) == (8_600, 9_200)
    best = ramp.best()
    assert best is not None and not best.writer_limited


def test_a_sustained_target_is_missed_when_the_relay_fell_behind_in_most_runs() -> None:
    runs = [(17_500, False), (18_724, True), (18_900, False)]  # (figure, writer-limited)
    records = [
        {**record("outbox-relay", "poll", "kafka", max_sustained_msg_per_s=figure,
                  lower_bound=limited), "run": n}
        for n, (figure, limited) in enumerate(runs)
    ]
    rows = report.summarize(records)
    judged = {t["target"]: t for t in report.targets(rows, {})}
    polling = judged["polling -> Kafka sustained with writers, msg/s"]
    assert (polling["measured"], polling["met"]) == (18_724, False)
    assert report.markdown_cell(polling["met"]) == "**NO**"


def test_bisection_does_not_climb_past_a_rate_the_writers_could_not_reach() -> None:
    # 9,000 was writer-limited twice: bisecting towards 10,000 would offer more still
    ramp = Ramp([8_000.0, 10_000.0], bisect=2)
    outcomes = {8_000.0: [(8_002, True)], 10_000.0: [(9_990, False)],
                9_000.0: [(8_700, True), (8_600, True)]}
    assert walk(ramp, outcomes) == [8_000, 10_000, 9_000, 9_000]
    assert ramp.passed == 8_700


def test_a_failure_never_sits_below_a_rate_kept_up_with() -> None:
    ramp = Ramp([15_000.0, 20_000.0], bisect=1)
    outcomes = {15_000.0: [(15_004, True)], 20_000.0: [(14_500, False)]}
    assert walk(ramp, outcomes) == [15_000, 20_000]
    assert (ramp.passed, ramp.failed) == (15_000, 15_000)


def test_a_relay_that_fell_behind_below_the_goal_is_a_miss_even_after_a_writers_dip() -> None:
    # 20,000 offered: the writers reached 18,000 (kept up, a lower bound), then on the
    # retry 19,000 and the relay fell behind: that is the relay's shortfall, not theirs.
    ramp = Ramp([15_000.0, 20_000.0], bisect=0)
    outcomes = {15_000.0: [(15_010, True)], 20_000.0: [(18_000, True), (19_000, False)]}
    walk(ramp, outcomes)
    best = ramp.best()
    assert best is not None and best.writer_limited and ramp.failed == 19_000
    runs = [record("outbox-relay", "poll", "kafka", max_sustained_msg_per_s=ramp.passed,
                   lower_bound=True, failed_msg_per_s=ramp.failed)]
    judged = {t["target"]: t for t in report.targets(report.summarize(runs), {})}
    assert judged["polling -> Kafka sustained with writers, msg/s"]["met"] is False


def _drain_run(steal: float | None) -> dict[str, Any]:
    run: dict[str, Any] = {"workload": "drain", "kind": "outbox-relay", "mode": "poll",
                           "broker": "kafka", "msg_per_s": 50_000.0, "complete": True}
    if steal is not None:
        run["machine_steal_pct"] = steal
    return run


def test_the_report_names_the_hypervisors_share_when_it_took_a_noticeable_one() -> None:
    noted = report.summarize([_drain_run(0.4), _drain_run(6.5), _drain_run(3.0)])
    assert "the hypervisor took 0.4 to 6.5 % of the cores' time (steal)" in noted[0]["notes"]
    quiet = report.summarize([_drain_run(0.4), _drain_run(1.9), _drain_run(None)])
    assert "notes" not in quiet[0]


def test_the_machine_share_reads_proc_stat_between_start_and_stop() -> None:
    from benchmarks.processes import MachineShare

    share = MachineShare()
    share.start()
    sum(range(2_000_000))  # some busy time, so the interval is not empty
    figures = share.stop()
    assert set(figures) == {"machine_busy_pct", "machine_steal_pct"}
    assert 0.0 <= figures["machine_steal_pct"] <= 100.0
    assert 0.0 <= figures["machine_busy_pct"] <= 100.0


def test_a_goal_above_the_writers_alone_says_so_and_a_relay_shortfall_stays_a_miss() -> None:
    records = [
        record("writers-alone", "none", "none", max_sustained_msg_per_s=17_210,
               machine_busy_pct=81.6),
        record("outbox-relay", "poll", "kafka", max_sustained_msg_per_s=14_503,
               lower_bound=True),
        record("outbox-relay", "cdc", "kafka", max_sustained_msg_per_s=9_000),
        record("outbox-relay", "poll", "rabbitmq", max_sustained_msg_per_s=7_000,
               lower_bound=True),
    ]
    judged = {t["target"]: t["met"] for t in report.targets(report.summarize(records), {})}
    # 20,000 is above the writers' 17,210, and the relay kept up with what they committed
    assert judged["polling -> Kafka sustained with writers, msg/s"] == report.BEYOND_WRITERS
    # the relay fell short of what the writers committed: its own miss, ceiling or not
    assert judged["CDC -> Kafka sustained with writers, msg/s"] is False
    # 8,000 is below the ceiling: only writer-limited
    assert judged["polling -> RabbitMQ sustained with writers, msg/s"] == report.WRITER_LIMITED
