"""Polling mode: claim a batch with FOR UPDATE SKIP LOCKED, publish it, acknowledge it.

One transaction per batch on the claim connection: the row locks and the per-bucket
advisory locks live exactly as long as the batch is in flight. The session has
``idle_in_transaction_session_timeout`` set to the lease TTL, so a relay frozen mid-batch
loses its transaction (and with it its locks) about when it loses its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.adapt import Loader
from psycopg.rows import class_row

from relay.backoff import full_jitter
from relay.config import RelayConfig
from relay.connector import Connector
from relay.db import DbSession
from relay.errors import LeaseLostError, RelayError, translate_db_error
from relay.leases import LeaseKeeper
from relay.model import Outcome, OutcomeKind
from relay.outbox_rows import Acknowledgement, ClaimedRow, plan_acknowledgement, to_message
from relay.sqlfiles import query

log = logging.getLogger("outbox_relay.poller")


class OrjsonLoader(Loader):
    """jsonb straight to Python objects with orjson (several times faster than json)."""

    def load(self, data: Any) -> Any:
        return orjson.loads(bytes(data))


def lock_space(schema: str) -> int:
    """The advisory-lock namespace of a schema's buckets (a signed 32-bit integer)."""
    return zlib.crc32(f"outbox-relay:{schema}".encode()) - 2**31


def claim_session(config: RelayConfig) -> DbSession:
    ttl_ms = str(int(config.lease_ttl * 1000))
    return DbSession(
        config.dsn,
        "claim",
        connect_timeout=config.connect_timeout,
        settings={
            "idle_in_transaction_session_timeout": ttl_ms,
            "statement_timeout": ttl_ms,
            "lock_timeout": str(int(config.publish_timeout * 1000)),
        },
    )


@dataclass
class PollerStats:
    published: int = 0
    failed: int = 0
    batches: int = 0


class Poller:
    """Drains the buckets this relay leases until told to stop."""

    def __init__(
        self,
        config: RelayConfig,
        session: DbSession,
        connector: Connector,
        leases: LeaseKeeper,
        relay_id: UUID,
        wake: asyncio.Event,
    ) -> None:
        self._config = config
        self._session = session
        self._connector = connector
        self._leases = leases
        self._wake = wake
        self._claim_params = {
            "relay_id": relay_id,
            "lock_space": lock_space(config.schema),
            "limit": config.batch_size,
        }
        self.stats = PollerStats()
        self._failures_in_a_row = 0

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            try:
                claimed = await self.drain_once()
                self._failures_in_a_row = 0
            except RelayError as exc:
                await self._session.discard()
                await self._back_off(stopping, exc)
                continue
            except Exception as exc:  # a bug, not an outage: keep the traceback, keep running
                log.exception("unexpected error while draining")
                await self._session.discard()
                await self._back_off(stopping, RelayError(f"{type(exc).__name__}: {exc}"))
                continue
            if claimed < self._config.batch_size:
                await _wait_any(stopping, self._wake, self._config.poll_interval)

    async def _back_off(self, stopping: asyncio.Event, exc: RelayError) -> None:
        delay = full_jitter(
            self._failures_in_a_row, base=self._config.retry_base, cap=self._config.retry_cap
        )
        self._failures_in_a_row += 1
        log.warning("drain failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)

    async def close(self) -> None:
        await self._session.close()

    async def drain_once(self) -> int:
        """Claim, publish and acknowledge one batch; return how many rows were claimed."""
        conn = await self._session.connection()
        conn.adapters.register_loader("jsonb", OrjsonLoader)
        try:
            async with conn.transaction():
                rows = await self._claim(conn)
                if rows:
                    await self._publish_and_acknowledge(conn, rows)
        except psycopg.Error as exc:
            raise translate_db_error(exc, "draining the outbox") from None
        return len(rows)

    async def _claim(self, conn: AsyncConnection[Any]) -> list[ClaimedRow]:
        if not self._leases.owned:
            return []
        async with conn.cursor(row_factory=class_row(ClaimedRow)) as cursor:
            await cursor.execute(query("claim_batch", self._config.schema), self._claim_params)
            return await cursor.fetchall()

    async def _publish_and_acknowledge(
        self, conn: AsyncConnection[Any], rows: Sequence[ClaimedRow]
    ) -> None:
        if not self._leases.holds_valid_leases():
            raise LeaseLostError("this relay's bucket leases ran out before publishing")
        batch = [to_message(row) for row in rows]
        started = time.monotonic()
        outcomes = await self._connector.publish(batch, timeout=self._config.publish_timeout)
        ack = plan_acknowledgement(
            rows, outcomes, retry_base=self._config.retry_base, retry_cap=self._config.retry_cap
        )
        await self._acknowledge(conn, ack)
        self._count(outcomes, time.monotonic() - started)

    async def _acknowledge(self, conn: AsyncConnection[Any], ack: Acknowledgement) -> None:
        schema = self._config.schema
        if ack.sent:
            name = "delete_sent" if self._config.retention == 0 else "mark_sent"
            await conn.execute(query(name, schema), {"seqs": ack.sent}, prepare=True)
        if ack.released_keys:
            await conn.execute(query("release_holds", schema), {"keys": ack.released_keys})
        if ack.failed_seqs:
            await conn.execute(query("record_failures", schema), ack.failure_params())
        if ack.hold_keys:
            await conn.execute(query("hold_keys", schema), ack.hold_params())

    def _count(self, outcomes: Sequence[Outcome], elapsed: float) -> None:
        delivered = sum(1 for o in outcomes if o.delivered)
        failed = len(outcomes) - delivered
        self.stats.batches += 1
        self.stats.published += delivered
        self.stats.failed += failed
        if failed:
            first = next(o for o in outcomes if not o.delivered)
            level = logging.ERROR if first.kind is OutcomeKind.PERMANENT else logging.WARNING
            log.log(
                level,
                "%d of %d messages not delivered (first: %s: %s); %.0f ms",
                failed,
                len(outcomes),
                first.kind.value,
                first.error,
                elapsed * 1000,
            )


async def _wait_any(stopping: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    """Return when woken, stopping, or after ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
