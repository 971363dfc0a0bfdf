"""Probes and metrics of a relay that drains several outboxes.

Each outbox keeps its own ``HealthState`` and ``RelayMetrics`` (relay.fleet); here they
are seen as one: the process is live while every outbox's loops are, and ready while any
outbox is (the body names the ones that are not), so one tenant's database going down
neither restarts nor unreadies the relay that serves the others. Every metric of an
outbox is exported with ``database`` and ``schema`` labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from relay.health import HealthState, Verdict


@dataclass(frozen=True)
class OutboxProbe:
    """What the probes read of one outbox: its name, its state, why it is not running."""

    database: str
    schema: str
    health: HealthState
    registry: CollectorRegistry
    problem: Callable[[], str | None]

    @property
    def name(self) -> str:
        return f"{self.database}/{self.schema}"


class FleetHealth:
    """``/healthz`` and ``/readyz`` over every outbox (HealthServer reads these two)."""

    def __init__(self, outboxes: Callable[[], Sequence[OutboxProbe]]) -> None:
        self._outboxes = outboxes

    def liveness(self) -> Verdict:
        stuck = {
            probe.name: verdict.detail["loop"]
            for probe in self._outboxes()
            if not (verdict := probe.health.liveness()).ok
        }
        return Verdict(not stuck, {"loop": "running"} if not stuck else {"loops": stuck})

    def readiness(self) -> Verdict:
        outboxes = self._outboxes()
        states = {probe.name: _state(probe) for probe in outboxes}
        ready = sum(state == "ok" for state in states.values())
        detail = {"outboxes_ready": ready, "outboxes": len(states), "outbox": states}
        return Verdict(ready > 0, detail)


def _state(probe: OutboxProbe) -> str:
    if problem := probe.problem():
        return problem
    verdict = probe.health.readiness()
    if verdict.ok:
        return "ok"
    detail = verdict.detail
    if not detail["started"]:
        return "starting"
    if "unready" in detail:
        return str(detail["unready"])
    if detail["broker_circuit"] == "open":
        return "broker circuit open"
    return "database: no recent answer"


class LabelledOutboxMetrics(Collector):
    """Every outbox's metrics as one family per name, each sample with the outbox's
    ``database`` and ``schema`` labels."""

    def __init__(self, outboxes: Callable[[], Iterable[OutboxProbe]]) -> None:
        self._outboxes = outboxes

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for probe in self._outboxes():
            outbox = {"database": probe.database, "schema": probe.schema}
            for family in probe.registry.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.add_sample(
                        sample.name, {**outbox, **sample.labels}, sample.value, sample.timestamp
                    )
        return list(families.values())
