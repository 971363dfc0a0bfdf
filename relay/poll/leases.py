"""Bucket leases: how several relays share one outbox without a coordinator.

Keys hash into 256 buckets. Each relay heartbeats a row in ``relays`` and leases about
``256 / live relays`` buckets in ``bucket_leases``, renewing them every ``ttl / 4``. A relay
that dies stops renewing; its buckets expire after ``ttl`` and the others take them over.
A relay that holds more than its fair share releases the excess when a new one joins.
The outboxes of a database in a relay of many tick together, in one transaction
(relay.poll.shared.LeaseTicker); each keeps its own leases and fair share.

The local clock decides whether this relay may still publish: leases count as valid only
until ``ttl`` after the renewal *started* (monotonic), minus a safety margin, so a relay
frozen past its lease never publishes work another relay may have taken.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

import psycopg
from psycopg import AsyncConnection, sql

from relay.db import DbSession
from relay.errors import RelayError, RetryableError
from relay.sqlfiles import bind, query
from relay.tasks import BackgroundTask, Signal, wait_any

log = logging.getLogger(__name__)

BUCKETS = 256
SAFETY_MARGIN = 0.2  # fraction of the TTL we refuse to use, for clock rate differences
RELEASE_TIMEOUT = 5.0  # seconds to hand leases back at stop; they expire anyway


class LeaseTicks(Protocol):
    """What ticks the keepers of a database's outboxes together (relay.poll.shared)."""

    def add(self, keeper: LeaseKeeper) -> None: ...

    def remove(self, keeper: LeaseKeeper) -> None: ...


class LeaseKeeper:
    """Heartbeats this relay and keeps its fair share of bucket leases: on its own task,
    or, given ``ticks``, with the other outboxes of its database."""

    def __init__(
        self,
        session: DbSession,
        *,
        schema: str,
        relay_id: UUID,
        relay_name: str,
        mode: str,
        ttl: float,
        on_change: Callable[[], None],
        published: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
        ticks: LeaseTicks | None = None,
        on_live: Callable[[], None] = lambda: None,
    ) -> None:
        self._session = session
        self.schema = self._schema = schema
        self._relay_id = relay_id
        self._relay_name = relay_name
        self._mode = mode
        self._ttl = ttl
        self._on_change = on_change
        # Writers' triggers skip the NOTIFY while no polling relay's row is live
        # (migration 0004): when this one's comes (back) to life, what they wrote
        # meanwhile woke nobody, so the relay looks for it once.
        self._on_live = on_live
        self._published = published
        self._clock = clock  # injectable, so a test can run the leases out
        self.owned: frozenset[int] = frozenset()
        self._held: tuple[frozenset[int], str] = (self.owned, "{}")
        self._valid_until = 0.0
        self._task = BackgroundTask("lease-keeper", self._run)
        self._stopping = Signal()
        self._ticks = ticks
        # the outbox's context (its log lines name it), for what a shared ticker runs
        self._context = contextvars.copy_context()

    @property
    def interval(self) -> float:
        return self._ttl / 4

    def holds_valid_leases(self) -> bool:
        return bool(self.owned) and self._clock() < self._valid_until

    def now(self) -> float:
        return self._clock()

    def start(self) -> None:
        self._context = contextvars.copy_context()
        if self._ticks is not None:
            self._ticks.add(self)
        else:
            self._task.start()

    async def stop(self) -> None:
        """Stop renewing and hand every bucket back at once (not after the TTL)."""
        self._stopping.set()
        if self._ticks is not None:
            self._ticks.remove(self)
        await self._task.stop(cancel=False)  # a renewal in progress finishes first
        self._valid_until = 0.0
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT), self._session.turn() as conn:
                params = {"relay_id": self._relay_id}
                await conn.execute(query("release_all_leases", self._schema), params)
                await conn.execute(query("forget_relay", self._schema), params)
        except (RelayError, psycopg.Error, TimeoutError) as exc:
            log.warning("could not release leases on stop (they expire by themselves): %s", exc)
        self.owned = frozenset()
        await self._session.close()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.tick_alone()
            await wait_any(self._stopping, timeout=self.interval)

    async def tick_alone(self) -> bool:
        """A tick of this outbox on its own; a failure is logged (never raised): False."""
        try:
            # bounded: a connection that stopped answering is dropped, not waited on
            async with asyncio.timeout(self._ttl / 2):
                await self.tick()
            return True
        except Exception as exc:
            # The leases run out by themselves if this keeps failing; publishing stops
            # through holds_valid_leases(). Reconnect on the next tick.
            self.in_context(log.warning, "lease renewal failed: %s", exc or type(exc).__name__)
            await self._session.discard()
            return False

    def in_context(self, call: Callable[..., None], *args: Any) -> None:
        """``call`` as if from the outbox's own task (a shared ticker's calls name it)."""
        self._context.run(call, *args)

    async def tick(self) -> None:
        """One heartbeat: renew, then acquire or release to reach the fair share."""
        started = self._clock()
        async with self._session.turn() as conn:
            live, owned = await self.renew(conn)
        self.in_context(self.renewed, started, live, owned)

    def renewal(self) -> sql.Composed:
        """This tick's statement, its values bound: heartbeat, live relays, renewal."""
        return bind(
            "queries.sql",
            "renew_leases",
            schema=sql.Identifier(self._schema),
            relay_id=sql.Literal(self._relay_id),
            ttl=sql.Literal(self._ttl),
            relay_name=sql.Literal(self._relay_name),
            mode=sql.Literal(self._mode),
            published=sql.Literal(self._published()),
            held=sql.Literal(self._held_literal()),
        )

    def _held_literal(self) -> str:
        """The buckets held, sorted, as an array literal (built again only on a change)."""
        if self._held[0] is not self.owned:
            self._held = (self.owned, "{" + ",".join(map(str, sorted(self.owned))) + "}")
        return self._held[1]

    async def renew(self, conn: AsyncConnection[Any]) -> tuple[int, frozenset[int]]:
        cursor = await conn.execute(self.renewal())
        return await self.rebalance(conn, await cursor.fetchone())

    async def rebalance(
        self, conn: AsyncConnection[Any], renewed: tuple[Any, ...] | None
    ) -> tuple[int, frozenset[int]]:
        """From renew_leases' row to the fair share: live relays and the buckets held.
        Acquiring or releasing takes a statement of its own, only when the share is off."""
        if renewed is None:
            raise RetryableError("the lease renewal returned no row")
        live = int(renewed[0])
        owned = self.owned if renewed[1] is None else frozenset(renewed[1])
        fair_share = math.ceil(BUCKETS / max(1, live))
        params = {"relay_id": self._relay_id, "ttl": self._ttl}
        if len(owned) > fair_share:
            excess = sorted(owned)[fair_share:]
            await conn.execute(query("release_leases", self._schema), {**params, "buckets": excess})
            return live, owned - set(excess)
        if len(owned) < fair_share:
            cursor = await conn.execute(
                query("acquire_leases", self._schema),
                {**params, "wanted": fair_share - len(owned)},
            )
            return live, owned | {int(row[0]) for row in await cursor.fetchall()}
        return live, owned

    def renewed(self, started: float, live: int, owned: frozenset[int]) -> None:
        """A renewal that began at ``started`` (this clock) is committed: the leases are
        valid from then; a change of the buckets held, and a heartbeat come (back) to
        life, are told."""
        if self._stopping.is_set():
            return  # stop() hands them back: they are not this relay's to use any more
        was_live = started < self._valid_until  # as far as this clock can tell
        lapsed_for = started - self._valid_until if self.owned else 0.0
        self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN)
        if lapsed_for > 0:
            log.warning(
                "the bucket leases of relay %s ran out %.1fs ago (not renewed in time: frozen, "
                "stalled or cut off from PostgreSQL); %d of its %d buckets are still its own",
                self._relay_name,
                lapsed_for,
                len(owned & self.owned),
                len(self.owned),
            )
        if owned != self.owned:
            log.info(
                "relay %s now leases %d buckets (%d live relays)",
                self._relay_name,
                len(owned),
                live,
            )
            self.owned = owned
            self._on_change()
        if not was_live:
            self._on_live()
