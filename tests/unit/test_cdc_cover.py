"""relay.cdc.cover: what a standby says of the outboxes the slot's leader does not stream."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from relay.cdc.cover import REPEAT_EVERY, CoverReport, CoverTarget
from relay.cdc.leader import StandbyView
from relay.health import HealthState
from relay.metrics import RelayMetrics

SLOT = "outbox_relay__shared"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _target(label: str) -> CoverTarget:
    health = HealthState()
    health.database_answered()
    health.beat(60)
    return CoverTarget(label, health, RelayMetrics(CollectorRegistry()))


def _not_streamed(target: CoverTarget) -> float | None:
    assert target.metrics is not None
    return target.metrics.registry.get_sample_value("outbox_relay_cdc_not_streamed")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_outbox_uncovered_two_rounds_running_is_reported_once_a_minute(caplog):
    clock = Clock()
    report = CoverReport(SLOT, clock=clock)
    a, c = _target("db/a"), _target("db/c")
    report.add("a", a)
    report.add("c", c)
    view = StandbyView("host:42", ("c",))
    caplog.set_level(logging.INFO)
    report.update(view)  # one round: perhaps a leader still claiming its rows
    assert c.health.readiness().ok and not _warnings(caplog)
    for _ in range(10):
        report.update(view)
        clock.now += 1
    said = _warnings(caplog)
    assert len(said) == 1
    assert "outbox c" in said[0] and SLOT in said[0] and "host:42" in said[0]
    verdict = c.health.readiness()
    assert not verdict.ok and "not streamed: relay host:42" in verdict.detail["unready"]
    assert _not_streamed(c) == 1
    assert a.health.readiness().ok
    clock.now += REPEAT_EVERY
    report.update(view)
    assert len(_warnings(caplog)) == 2  # still so a minute later: said again


def test_the_mark_goes_when_the_lead_covers_the_outbox_or_it_leaves():
    clock = Clock()
    report = CoverReport(SLOT, clock=clock)
    c, d = _target("db/c"), _target("db/d")
    report.add("c", c)
    report.add("d", d)
    view = StandbyView("host:42", ("c", "d"))
    report.update(view)
    report.update(view)
    assert not c.health.readiness().ok and not d.health.readiness().ok
    report.update(None)  # this relay leads now
    assert c.health.readiness().ok
    assert _not_streamed(c) == 0
    report.update(view)
    report.update(view)
    report.remove("d")  # left this relay: its health is no longer marked
    assert d.health.readiness().ok
    report.update(StandbyView("host:42", ()))
    assert c.health.readiness().ok
