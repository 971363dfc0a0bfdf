"""Polling mode: claim a batch with FOR UPDATE SKIP LOCKED, publish it, acknowledge it.

One transaction per batch on the claim connection: the row locks and the per-bucket
advisory locks live exactly as long as the batch is in flight. The session has
``idle_in_transaction_session_timeout`` set to the lease TTL, so a relay frozen mid-batch
loses its transaction (and with it its locks) about when it loses its leases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection

from relay.backoff import full_jitter
from relay.config import RelayConfig
from relay.db import INDEX_PLAN_SETTINGS, DbSession, lock_space
from relay.decorators import PublishStack
from relay.errors import (
    DatabaseUnavailableError,
    LeaseLostError,
    RelayError,
    translate_db_error,
)
from relay.health import HealthState
from relay.metrics import RelayMetrics
from relay.model import OutboxMessage, Outcome
from relay.outbox_rows import (
    Acknowledgement,
    FailurePolicy,
    plan_acknowledgement,
    write_acknowledged_rows,
    write_acknowledgement,
)
from relay.poll.ack_rides import RIDES_FOR, WaitingAck
from relay.poll.claims import SentAndCommit, SimpleClaim, lock_and_claim
from relay.poll.leases import LeaseKeeper
from relay.poll.rounds import ClaimRound, DrainResult, Published
from relay.poll.spread import LaneSpread
from relay.poll.wakeups import QUIET_POLL, RECHECK_AFTER, WakeupSwitch
from relay.sqlfiles import query
from relay.tasks import wait_any

log = logging.getLogger(__name__)

# A wake-up that ends a wait longer than this many poll lingers is taken as a lone commit
# and claimed at once: commits that far apart (a service's usual trickle) rarely have
# another right behind, and lingering only delayed the one.
LONE_COMMIT_AFTER = 2
# A lane whose last round claimed fewer rows than this claims in one simple query
# (SimpleClaim); a larger batch comes in binary through the pipeline.
SIMPLE_CLAIM_UNDER = 16


def claim_session(config: RelayConfig, lane: int = 0) -> DbSession:
    ttl_ms = str(int(config.lease_ttl * 1000))
    return DbSession(
        config.dsn,
        f"claim-{lane}",
        connect_timeout=config.connect_timeout,
        settings={
            "idle_in_transaction_session_timeout": ttl_ms,
            "statement_timeout": ttl_ms,
            "lock_timeout": str(int(config.publish_timeout * 1000)),
            # The batch's COMMIT need not wait for its WAL flush: if PostgreSQL crashes
            # before the flush, the acknowledgement is lost as if the relay had died
            # before committing, and the batch is published again (a duplicate, never a
            # loss). Saves a disk flush per batch; the application's commits are untouched.
            "synchronous_commit": "off",
            # created_at then loads with datetime's own UTC: the confirm latency of each
            # message is a plain subtraction, where a ZoneInfo (the server's zone, even
            # 'Etc/UTC') costs a Python-level utcoffset() call per message.
            "TimeZone": "UTC",
            **INDEX_PLAN_SETTINGS,
        },
    )


@dataclass
class PollerStats:
    published: int = 0
    failed: int = 0
    batches: int = 0
    dead_lettered: int = 0
    outages: int = 0


class Poller:
    """Drains one lane's share of the buckets this relay leases until told to stop.

    A relay runs ``claim_lanes`` pollers, each with its own claim session and its own
    fixed share of the leased buckets (bucket modulo the lane count). While one lane's
    batch is with the broker, another lane's claim runs in PostgreSQL. A key lives in
    one bucket and a bucket in one lane, whose batches go one after another, so per-key
    order holds as with a single lane.
    """

    def __init__(
        self,
        config: RelayConfig,
        session: DbSession,
        connector: PublishStack,
        leases: LeaseKeeper,
        relay_id: UUID,
        wake: asyncio.Event,
        *,
        metrics: RelayMetrics | None = None,
        health: HealthState | None = None,
        lane: int = 0,
        stats: PollerStats | None = None,
        switch: WakeupSwitch | None = None,
        spread: LaneSpread | None = None,
        claim_round: ClaimRound | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._connector = connector
        self._leases = leases
        self._wake = wake
        self._metrics = metrics or RelayMetrics()
        self._health = health or HealthState()
        self._claim_params = {
            "relay_id": relay_id,
            "lock_space": lock_space(config.schema),
            "limit": config.batch_size,
            "lane": lane,
            "lanes": config.claim_lanes,
            "buckets": None,  # the ones the lock took (see claim_batch)
        }
        # While the lanes are gathered, lane 0 claims every leased bucket (relay.poll.spread).
        self._every_bucket = {**self._claim_params, "lane": 0, "lanes": 1}
        self._simple_claims = {  # by whether the lanes are spread
            True: SimpleClaim(config.schema, self._claim_params),
            False: SimpleClaim(config.schema, self._every_bucket),
        }
        self._spread = spread or LaneSpread(config.claim_lanes, config.batch_size)
        self._loop_name = f"claim lane {lane}"
        self._lane = lane
        self._switch = switch
        self._recheck_soon = False
        self._policy = FailurePolicy(
            retry_base=config.retry_base,
            retry_cap=config.retry_cap,
            max_attempts=config.max_attempts,
            on_poison=config.on_poison,
        )
        name = "delete_sent" if config.retention == 0 else "mark_sent"
        self._sent_and_commit = SentAndCommit(query(name, config.schema))
        self.stats = stats if stats is not None else PollerStats()  # shared by the lanes
        self._failures_in_a_row = 0
        self._round = claim_round  # its database's, in a relay of many outboxes
        self._alone = False  # failed draining alone: out of the rounds until it succeeds
        self._last_claimed = config.batch_size  # a relay starts on a backlog, if any
        self._waiting_ack = WaitingAck(session, self.batch_deadline, self._count_published)

    @property
    def batch_deadline(self) -> float:
        """Claim, publish and acknowledge must fit in one lease TTL; past it the claim
        transaction is abandoned (the connection closed, never waited on)."""
        return self._config.lease_ttl

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            await self._run(stopping)
        finally:
            await self._waiting_ack.flush()

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            self._metrics.loop_went_round()
            if not self._spread.claims(self._lane):
                await self._wait_to_be_spread(stopping)
                continue
            if await self._circuit_open(stopping):
                continue
            self._health.beat(self.batch_deadline + self._config.publish_timeout, self._loop_name)
            round_epoch = self._switch.epoch if self._switch is not None else 0
            result = await self._drain_in_turn()
            await self._session.release()  # a pooled connection goes to the next in line
            if result.error is not None or result.outage:
                await self._back_off(stopping, result)
                continue
            if self._failures_in_a_row:
                log.info("draining again after %d failed rounds", self._failures_in_a_row)
            self._failures_in_a_row = 0
            self._spread.round_done(self._lane, result.claimed)
            if result.claimed < self._config.batch_size:
                await self._wait_for_work(stopping, round_epoch)

    async def _wait_to_be_spread(self, stopping: asyncio.Event) -> None:
        """Lane 0 claims this lane's buckets until a backlog spreads them again."""
        self._health.beat(self._config.poll_interval, self._loop_name)
        await wait_any(stopping, self._wake, timeout=self._config.poll_interval)

    async def _wait_for_work(self, stopping: asyncio.Event, round_epoch: int) -> None:
        """Drained: wait for a NOTIFY (or the poll interval), then linger a moment so the
        commits right behind the first share its batch; not after a long wait, which a
        lone commit ended."""
        if self._waiting_ack.waiting:
            idle_since = time.monotonic()
            await wait_any(stopping, self._wake, timeout=RIDES_FOR)
            if self._wake.is_set() and not stopping.is_set():
                linger = self._config.poll_linger
                if linger > 0 and time.monotonic() - idle_since <= LONE_COMMIT_AFTER * linger:
                    await asyncio.sleep(linger)
                return  # the acknowledgement goes with the next claim
            await self._waiting_ack.flush()
        if self._switch is not None and self._switch.keeps_polling(self._lane):
            self._health.beat(QUIET_POLL, self._loop_name)
            await wait_any(stopping, self._wake, timeout=QUIET_POLL)  # rows keep coming: no NOTIFY
            return
        if await self._writers_were_quiet(round_epoch):
            self._recheck_soon = True
            return  # look once more before waiting: a row committed meanwhile woke nobody
        linger = self._config.poll_linger
        interval = RECHECK_AFTER if self._recheck_soon else self._config.poll_interval
        self._recheck_soon = False
        self._health.beat(interval + linger, self._loop_name)
        idle_since = time.monotonic()
        await wait_any(stopping, self._wake, timeout=interval)
        woken = self._wake.is_set() and not stopping.is_set()
        if linger > 0 and woken and time.monotonic() - idle_since <= LONE_COMMIT_AFTER * linger:
            await asyncio.sleep(linger)

    async def _circuit_open(self, stopping: asyncio.Event) -> bool:
        """While the circuit is open, claim nothing: wait (quietly) for the next probe."""
        wait = self._connector.ready_in()
        if wait <= 0:
            return False
        await self._waiting_ack.flush()
        pause = min(wait, max(self._config.poll_interval, 0.05))
        self._health.beat(pause, self._loop_name)
        await wait_any(stopping, timeout=pause)
        return True

    async def _drain_in_turn(self) -> DrainResult:
        """A light round with its database's other outboxes' (relay.poll.rounds) when it
        can; alone when the round failed as a whole, and while draining alone fails."""
        if self._round is not None and not self._alone and self._light():
            # it may wait for the round in flight before its own
            self._health.beat(
                2 * self.batch_deadline + self._config.publish_timeout, self._loop_name
            )
            result = await self._round.drain(self)
            if result is not None:
                return result
        result = await self._drain_guarded()
        self._alone = result.error is not None
        return result

    def _light(self) -> bool:
        """Claims in one simple query: lane 0 of gathered lanes, after a short round."""
        return not self._spread.spread and self._last_claimed < SIMPLE_CLAIM_UNDER

    async def _drain_guarded(self) -> DrainResult:
        try:
            return await self.drain_once()
        except RelayError as exc:
            self._waiting_ack.forget()  # its transaction ends with the connection
            await self._session.discard()
            return DrainResult(error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug, not an outage: keep the traceback, keep running
            log.exception("unexpected error while draining")
            self._waiting_ack.forget()
            await self._session.discard()
            return DrainResult(error=f"{type(exc).__name__}: {exc}")

    async def _writers_were_quiet(self, round_epoch: int) -> bool:
        """Ask writers to NOTIFY again if they had stopped (relay.poll.wakeups)."""
        if self._switch is None:
            return False
        if self._switch.listening:
            # Nothing to ask of writers: no connection taken (from a relay of many's pool,
            # a turn in its line and a check of the connection handed back, every round).
            return self._switch.epoch != round_epoch
        try:
            conn = await self._session.connection()
            return await self._switch.before_waiting(conn, self._lane, round_epoch)
        except (RelayError, psycopg.Error) as exc:
            await self._session.discard()
            log.debug("could not ask writers to notify again (%s); polling meanwhile", exc)
            return True  # unsure whether writers notify: look again soon
        finally:
            await self._session.release()

    async def _back_off(self, stopping: asyncio.Event, result: DrainResult) -> None:
        delay = full_jitter(
            self._failures_in_a_row, base=self._config.retry_base, cap=self._config.retry_cap
        )
        self._failures_in_a_row += 1
        # The first failure of a streak is a warning; the rest are debug lines, so an
        # outage does not flood the log (the circuit breaker logs its transitions).
        level = logging.WARNING if self._failures_in_a_row == 1 else logging.DEBUG
        if result.outage:
            log.log(
                level,
                "the broker confirmed none of %d messages; their attempts are not "
                "counted; retrying in %.1fs",
                result.claimed,
                delay,
            )
        else:
            log.log(level, "drain failed (%s); retrying in %.1fs", result.error, delay)
        self._health.beat(delay, self._loop_name)
        await wait_any(stopping, timeout=delay)

    async def close(self) -> None:
        await self._session.close()

    async def drain_once(self) -> DrainResult:
        """Claim, publish and acknowledge one batch, in one transaction."""
        conn = await self._session.connection()
        try:
            async with asyncio.timeout(self.batch_deadline):
                result = await self._drain(conn)
        except TimeoutError:
            await self._session.discard()  # never wait on a connection that stopped answering
            raise DatabaseUnavailableError(
                f"a batch did not finish within {self.batch_deadline:g}s (the lease TTL); "
                "its claim is abandoned"
            ) from None
        except psycopg.Error as exc:
            raise translate_db_error(exc, "draining the outbox") from None
        self._health.database_answered()
        return result

    async def _drain(self, conn: AsyncConnection[Any]) -> DrainResult:
        # An explicit transaction: on any failure the caller closes the connection rather
        # than sending ROLLBACK down a connection that may have stopped answering.
        if not self._leases.owned:
            await self._waiting_ack.flush()
            return DrainResult()
        rows = await self._claim(conn)
        if rows:
            outage = await self._publish_and_acknowledge(conn, rows)  # and commits
        else:
            outage = False
            await conn.execute("COMMIT")
        if self._switch is not None and not outage:
            # A flag change goes in a transaction of its own, not a waiting batch's.
            await self._switch.round_done(
                conn, self._lane, claimed=len(rows), settle=self._waiting_ack.flush
            )
        return DrainResult(claimed=len(rows), outage=outage)

    async def _claim(self, conn: AsyncConnection[Any]) -> list[OutboxMessage]:
        spread = self._spread.spread
        if self._last_claimed < SIMPLE_CLAIM_UNDER:
            deferred = self._waiting_ack.take()
            if deferred is None:
                rows = await self._simple_claims[spread](conn)
            else:
                rows = await self._simple_claims[spread](conn, before=deferred[0])
                self._count_published(deferred[1])
        else:
            await self._waiting_ack.flush()
            params = self._claim_params if spread else self._every_bucket
            rows = await lock_and_claim(conn, self._config.schema, params)
        self._last_claimed = len(rows)
        return rows

    async def _publish_and_acknowledge(
        self, conn: AsyncConnection[Any], batch: Sequence[OutboxMessage]
    ) -> bool:
        published = await self.publish(batch)
        if self._may_defer(published):
            statement = self._sent_and_commit.statement(conn, published.ack.sent)
            self._waiting_ack.hold(statement, published)
            return False
        await self._acknowledge_and_commit(conn, published.ack)
        self._count(published.ack, published.outcomes, published.elapsed)
        return published.ack.outage

    def _may_defer(self, published: Published) -> bool:
        """A light batch, all sent, of a lane with a connection of its own, while writers
        notify (a NOTIFY ends the wait): its acknowledgement can wait a moment for the
        next claim (relay.poll.ack_rides)."""
        ack = published.ack
        notified = self._switch is None or self._switch.listening
        return (
            bool(ack.sent)
            and ack.sent_only
            and not ack.outage
            and self._round is None
            and notified
            and self._light()
            and len(ack.sent) < SIMPLE_CLAIM_UNDER
        )

    def _count_published(self, published: Published) -> None:
        self._count(published.ack, published.outcomes, published.elapsed)

    async def publish(self, batch: Sequence[OutboxMessage]) -> Published:
        """Publish a claimed batch; what its acknowledgement must write."""
        if not self._leases.holds_valid_leases():
            raise LeaseLostError("this relay's bucket leases ran out before publishing")
        started = time.monotonic()
        outcomes = await self._connector.publish(batch, timeout=self._config.publish_timeout)
        if not self._leases.holds_valid_leases():
            # Acknowledging is still right if the claim transaction lives (its locks kept
            # every other relay off these buckets); if PostgreSQL ended it, the COMMIT
            # fails and the new owner publishes the batch again (duplicates, in order).
            log.warning("this relay's bucket leases ran out while a batch was in flight")
        ack = plan_acknowledgement(batch, outcomes, self._policy)
        return Published(ack, outcomes, time.monotonic() - started)

    # --- its part in a claim round (relay.poll.rounds.RoundMember) ---

    def leased(self) -> bool:
        return bool(self._leases.owned)

    def claim_statements(self, conn: AsyncConnection[Any]) -> bytes:
        return self._simple_claims[False].body(conn)  # a round's lanes are gathered

    async def acknowledgement(
        self, conn: AsyncConnection[Any], published: Published
    ) -> bytes | None:
        """The usual batch's write, for the round's one query; any other batch's writes
        go now, on the round's transaction (None)."""
        ack = published.ack
        if ack.sent and ack.sent_only:
            return self._sent_and_commit.write(conn, ack.sent)
        await write_acknowledged_rows(
            conn, self._config.schema, ack, retention=self._config.retention
        )
        return None

    async def round_done(
        self,
        conn: AsyncConnection[Any],
        batch: Sequence[OutboxMessage],
        published: Published | None,
    ) -> DrainResult:
        """After the round's COMMIT: count the batch, as drain_once does."""
        self._last_claimed = len(batch)
        outage = published is not None and published.ack.outage
        if published is not None:
            self._count(published.ack, published.outcomes, published.elapsed)
        self._health.database_answered()
        if self._switch is not None and not outage:
            await self._switch.round_done(conn, self._lane, claimed=len(batch))
        return DrainResult(claimed=len(batch), outage=outage)

    async def _acknowledge_and_commit(
        self, conn: AsyncConnection[Any], ack: Acknowledgement
    ) -> None:
        if ack.sent and ack.sent_only:
            # The usual batch: its one write and COMMIT in one query, one round trip.
            statement = self._sent_and_commit.statement(conn, ack.sent)
            await conn.execute(statement, prepare=False)
            return
        await write_acknowledgement(
            conn, self._config.schema, ack, retention=self._config.retention
        )

    def _count(self, ack: Acknowledgement, outcomes: Sequence[Outcome], elapsed: float) -> None:
        delivered = len(ack.sent)
        failed = len(outcomes) - delivered
        self.stats.batches += 1
        self.stats.published += delivered
        self.stats.failed += failed
        self.stats.dead_lettered += len(ack.dead_seqs)
        self._metrics.batches.inc()
        connector = self._connector.name
        if ack.outage:
            self.stats.outages += 1
            self._metrics.outage_batches.labels(connector).inc()
        if ack.failed_seqs or ack.dead_seqs:
            self._metrics.attempts_failed.labels(connector).inc(
                len(ack.failed_seqs) + len(ack.dead_seqs)
            )
        for reason in ack.dead_reasons:
            self._metrics.dead_lettered.labels(reason).inc()
        if failed and not ack.outage:
            self._log_failures(ack, outcomes, elapsed)

    def _log_failures(
        self, ack: Acknowledgement, outcomes: Sequence[Outcome], elapsed: float
    ) -> None:
        first = next(o for o in outcomes if not o.delivered)
        log.warning(
            "%d of %d messages not delivered (first: %s: %s); %d will be retried, %d wait "
            "behind their key, %d moved to the dead letters; %.0f ms",
            len(outcomes) - len(ack.sent),
            len(outcomes),
            first.kind.value,
            first.error,
            len(ack.failed_seqs),
            ack.waiting,
            len(ack.dead_seqs),
            elapsed * 1000,
        )
        for seq, error, reason in zip(
            ack.dead_seqs, ack.dead_errors, ack.dead_reasons, strict=True
        ):
            log.error("message seq %d moved to the dead letters (%s): %s", seq, reason, error)
