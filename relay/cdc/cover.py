"""A standby's word on the outboxes the slot's leader does not stream.

Relays that share a slot must select the same outboxes of its database
(docs/multi-tenant.md). When they do not, the leader streams its own outboxes only: an
outbox that only a standby selects passes through the stream unread, the slot is
confirmed past its changes, its rows wait in its table until this relay leads the slot,
and what it wrote with ``emit()`` meanwhile is lost. Nothing would fail on its own, so
the standby says it: a WARNING naming the outbox, the slot and the leader (again every
``REPEAT_EVERY`` while it lasts), ``/readyz`` marks the outbox not ready with the
reason, and ``outbox_relay_cdc_not_streamed`` is 1 for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.cdc.leader import StandbyView
from relay.health import HealthState
from relay.logs import CURRENT_OUTBOX
from relay.metrics import RelayMetrics

log = logging.getLogger(__name__)

REPEAT_EVERY = 60.0  # seconds between warnings about one outbox while it lasts


@dataclass(frozen=True)
class CoverTarget:
    """What the report marks of one outbox: its log label, readiness and metric."""

    label: str | None  # what its log lines are prefixed with (None: a relay of one)
    health: HealthState
    metrics: RelayMetrics | None = None


class CoverReport:
    """Turns each standby round's view (relay.cdc.leader.StandbyView) into the signals."""

    def __init__(self, slot: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._slot = slot
        self._clock = clock
        self._targets: dict[str, CoverTarget] = {}
        self._last: set[str] = set()  # uncovered in the previous round
        self._warned: dict[str, float] = {}  # the outboxes marked now, and when last said

    def add(self, schema: str, target: CoverTarget) -> None:
        self._targets[schema] = target
        if target.metrics is not None:
            target.metrics.cdc_not_streamed.set(0)

    def remove(self, schema: str) -> None:
        """The outbox left this relay: its marks go (its health may serve it again)."""
        self._unmark(schema, announce=False)
        self._targets.pop(schema, None)
        self._last.discard(schema)

    def update(self, view: StandbyView | None) -> None:
        """One round's view; None when no other relay leads (or this one does now)."""
        uncovered = set(view.uncovered) if view is not None else set()
        # Uncovered two rounds in a row: not a leader still claiming its outboxes' rows.
        for schema in sorted(uncovered & self._last):
            assert view is not None
            self._mark(schema, view.leader)
        for schema in [s for s in self._warned if s not in uncovered]:
            self._unmark(schema, announce=True)
        self._last = uncovered

    def _mark(self, schema: str, leader: str) -> None:
        target = self._targets.get(schema)
        if target is None:
            return
        target.health.unready = (
            f"not streamed: relay {leader} leads CDC slot {self._slot} and does not select "
            "this outbox (relays sharing a slot must select the same outboxes); its rows "
            "wait until this relay leads the slot")
        if target.metrics is not None:
            target.metrics.cdc_not_streamed.set(1)
        now = self._clock()
        last = self._warned.get(schema)
        if last is None or now - last >= REPEAT_EVERY:
            self._warned[schema] = now
            _say(target, logging.WARNING,
                 "outbox %s is not streamed by the relay that leads slot %s (%s): that relay "
                 "does not select it, so its changes pass the slot unread; its rows wait in "
                 "its table until this relay leads the slot, and events it writes with "
                 "emit() meanwhile are lost. Relays that share a slot must select the same "
                 "outboxes of the database (docs/multi-tenant.md)",
                 schema, self._slot, leader)

    def _unmark(self, schema: str, *, announce: bool) -> None:
        if self._warned.pop(schema, None) is None:
            return
        target = self._targets.get(schema)
        if target is None:
            return
        target.health.unready = None
        if target.metrics is not None:
            target.metrics.cdc_not_streamed.set(0)
        if announce:
            _say(target, logging.INFO, "outbox %s is covered by the lead of slot %s now",
                 schema, self._slot)


def _say(target: CoverTarget, level: int, message: str, *args: object) -> None:
    named = CURRENT_OUTBOX.set(target.label)
    try:
        log.log(level, message, *args)
    finally:
        CURRENT_OUTBOX.reset(named)
