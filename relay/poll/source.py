"""Polling mode assembled: bucket leases, claim lanes, the wake-up listener and retention.

The lease keeper decides which buckets this relay drains; each claim lane drains its
share of them; NOTIFYs (and lease changes) wake the lanes; retention deletes sent rows
when ``--retention`` keeps them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import psycopg

from relay.config import RelayConfig
from relay.db import INDEX_PLAN_SETTINGS, DbSession
from relay.poll.leases import LeaseKeeper
from relay.poll.listener import WakeListener
from relay.poll.poller import Poller, PollerStats, claim_session
from relay.poll.retention import RetentionTask
from relay.poll.shared import OutboxPlace, PollDatabase, poll_connections
from relay.poll.spread import LaneSpread
from relay.poll.wakeups import WakeupSwitch
from relay.scheduler import QUIET_RECHECK, Scheduler
from relay.source import SourceKind, SourceParts
from relay.tasks import Signal, bounded

RETENTION_EVERY = 10.0


def duty_session(
    config: RelayConfig, duty: str, settings: Mapping[str, str] | None = None
) -> DbSession:
    """A connection for one background duty; statements end within a lease TTL."""
    return DbSession(
        config.dsn,
        duty,
        connect_timeout=config.connect_timeout,
        settings={"statement_timeout": str(int(config.lease_ttl * 1000)), **(settings or {})},
    )


class PollSource:
    """Drains one outbox table by polling, side by side with any other relays."""

    def __init__(self, parts: SourceParts) -> None:
        keep = parts.keep_session
        shared = parts.database if isinstance(parts.database, PollDatabase) else None
        config = shared.outbox_config(parts.config) if shared else parts.config
        self.config = config

        def duty(name: str, settings: Mapping[str, str] | None = None) -> DbSession:
            return shared.duty(name) if shared else keep(duty_session(config, name, settings))

        def claim(lane: int) -> DbSession:
            return shared.claim_session() if shared else keep(claim_session(config, lane))

        # One wake-up event per lane, so a lane clearing its own cannot swallow another's.
        self.wakeups = [Signal() for _ in range(config.claim_lanes)]
        self.stats = PollerStats()
        self._wake_ups = 0  # NOTIFYs and the shared look's wake-ups (activity)
        self.spread = LaneSpread(config.claim_lanes, config.batch_size, on_change=self.wake)
        self.leases = LeaseKeeper(
            duty("leases"),
            schema=config.schema,
            relay_id=parts.relay_id,
            relay_name=config.relay_name,
            mode=config.mode,
            ttl=config.lease_ttl,
            on_change=self._leases_changed(parts),
            published=lambda: self.stats.published,
            ticks=shared.lease_ticker if shared else None,
            on_live=self._notified,
        )
        self.wakeup_switch = WakeupSwitch(
            config.schema,
            parts.relay_id,
            config.claim_lanes,
            on_quiet=self.wake,
            claiming=self.spread.claiming,
        )
        self.pollers = [
            Poller(
                config,
                claim(lane),
                parts.connector,
                self.leases,
                parts.relay_id,
                self.wakeups[lane],
                metrics=parts.metrics,
                health=parts.health,
                lane=lane,
                stats=self.stats,
                switch=self.wakeup_switch,
                spread=self.spread,
                claim_round=shared.claim_round if shared else None,
            )
            for lane in range(config.claim_lanes)
        ]
        self.scheduler = Scheduler(
            duty("scheduler", INDEX_PLAN_SETTINGS),
            config.schema,
            recheck=self._scheduler_recheck,
            on_promoted=self.wake,
        )
        self.listener: WakeListener | OutboxPlace = (
            shared.listener_for(config.schema, self._notified)
            if shared
            else WakeListener(
                keep(duty_session(config, "listen")), config.schema, self._notified,
                coalesce=config.poll_linger,
            )
        )
        self.lookout = shared.lookout_for(config.schema, self._notified) if shared else None
        self._due_look = shared.due_look if shared else None
        self.retention = RetentionTask(
            duty("housekeeping", INDEX_PLAN_SETTINGS),
            config.schema,
            config.retention,
            RETENTION_EVERY,
        )

    def _leases_changed(self, parts: SourceParts) -> Callable[[], None]:
        def changed() -> None:
            parts.metrics.buckets_owned.set(len(self.leases.owned))
            self.wake()

        return changed

    @property
    def published(self) -> int:
        return self.stats.published

    def wake(self) -> None:
        """A NOTIFY or a lease change: every lane that claims now looks for work."""
        for lane, wakeup in enumerate(self.wakeups):
            if self.spread.claims(lane):
                wakeup.set()

    def _notified(self) -> None:
        """Writers inserted rows: the lanes look for work, and the scheduler for delayed
        messages among them (a delayed insert notifies like any other)."""
        self._wake_ups += 1
        self.wake()
        if self._due_look is not None:  # a relay of many: looks together, poked if need be
            self._due_look.poke(self.config.schema, self.scheduler)
        else:
            self.scheduler.poke()

    def _scheduler_recheck(self) -> float:
        """While writers skip the NOTIFY (relay.poll.wakeups), nothing pokes the scheduler."""
        if self.wakeup_switch.listening:
            return self.config.poll_interval
        return min(self.config.poll_interval, QUIET_RECHECK)

    async def run(self, stopping: asyncio.Event) -> None:
        self.leases.start()
        self.listener.start()
        if self.lookout is not None:
            self.lookout.start()
        self.retention.start()
        self.scheduler.start(stopping)
        await asyncio.gather(*(poller.run(stopping) for poller in self.pollers))

    async def close(self, *, timeout: float) -> None:
        """Stop listening and purging, hand the leases back (others take the buckets at
        once, not after the TTL), close the lanes: each step within ``timeout``."""
        await bounded(self.listener.stop(), timeout, "listener")
        if self.lookout is not None:
            await self.lookout.stop()
        if self._due_look is not None:
            self._due_look.remove(self.config.schema)
        await bounded(self.retention.stop(), timeout, "retention")
        await bounded(self.scheduler.stop(), timeout, "scheduler")
        await bounded(self.leases.stop(), timeout, "lease keeper")
        await bounded(self._close_lanes(), timeout, "poller")

    async def _close_lanes(self) -> None:
        await asyncio.gather(*(poller.close() for poller in self.pollers))

    def sample(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        return {}

    def activity(self) -> Hashable | None:
        """In a relay of many outboxes, what it has seen of this one: its NOTIFYs, the
        shared look's wake-ups (it finds every message waiting to be claimed or due,
        NOTIFY or not, each --poll-interval) and what its lanes handled; the sampler
        reads an outbox quiet by these less often (relay.operability). Alone, with no
        shared look: None, read every round."""
        if self.lookout is None:
            return None
        stats = self.stats
        return (self._wake_ups, stats.batches, stats.failed, stats.dead_lettered,
                stats.outages)


POLL = SourceKind(
    preflight=lambda config: None,
    build=PollSource,
    share=PollDatabase,
    connections=poll_connections,
)
