"""LISTEN for the outbox trigger's NOTIFY: a wake-up hint, never the source of truth.

A missed notification only costs one poll interval; after a reconnect we wake the
poller once, because notifications sent while we were away are lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import psycopg
from psycopg import sql

from relay.backoff import SessionBackoff
from relay.db import DbSession
from relay.errors import RelayError
from relay.tasks import BackgroundTask

log = logging.getLogger(__name__)


def channel_name(schema: str) -> str:
    return f"{schema}.messages"


def listen_statement(verb: Literal["LISTEN", "UNLISTEN"], channel: str) -> sql.Composed:
    return sql.SQL("{} {}").format(sql.SQL(verb), sql.Identifier(channel))


class SharedListener:
    """One LISTEN connection for the outboxes of a database: a notification on an
    outbox's channel calls that outbox's ``wake``, at most once per ``coalesce`` seconds.

    Every notifying transaction sends one notification, so at a high commit rate handling
    each on its own was a large share of the relay's CPU. After a wake-up that came soon
    after the one before, the listener pauses for ``coalesce`` (the poll linger, which the
    woken poller waits anyway), then reads whatever arrived meanwhile in one go and wakes
    each outbox once for all of it. Notifications further apart than PAUSE_WITHIN pauses
    (a service's trickle) are taken as they come: a pause would gather nothing and cost a
    timer and a turn of the event loop each.
    """

    SYNC_EVERY = 0.5  # how soon a newly added outbox's channel is listened to
    PAUSE_WITHIN = 4  # pause after a wake-up that came within this many pauses of the last

    def __init__(self, session: DbSession, coalesce: float) -> None:
        self._session = session
        self._coalesce = coalesce
        self._wakes: dict[str, Callable[[], None]] = {}
        self._listening: set[str] = set()
        # A connection that breaks right after LISTEN succeeds must not be retried at
        # the base delay forever: the backoff starts small again only after a session
        # that listened for a while.
        self._backoff = SessionBackoff(base=0.5, cap=15.0)
        self._task = BackgroundTask("wake-listener", self._run)

    def add(self, schema: str, wake: Callable[[], None]) -> None:
        self._wakes[channel_name(schema)] = wake
        self._task.start()

    def remove(self, schema: str) -> None:
        self._wakes.pop(channel_name(schema), None)

    async def stop(self) -> None:
        await self._task.stop()
        await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (RelayError, psycopg.Error) as exc:
                await self._session.discard()
                delay = self._backoff.next_delay()
                log.info("wake-up listener lost its connection (%s); polling meanwhile", exc)
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        conn = await self._session.connection()
        self._listening = set()
        await self._follow(conn)
        self._backoff.started()
        last_woken = -math.inf
        while True:
            # A packet's notifications at once (stop_after=1 ends after the packet).
            notifies = conn.notifies(timeout=self.SYNC_EVERY, stop_after=1)
            woken = {notification.channel async for notification in notifies}
            for channel in woken:
                if (wake := self._wakes.get(channel)) is not None:
                    wake()
            await self._follow(conn)
            if woken and self._coalesce > 0:
                now = time.monotonic()
                if now - last_woken < self.PAUSE_WITHIN * self._coalesce:
                    await self._pause()
                last_woken = now

    async def _pause(self) -> None:
        """Let the notifications right behind this one arrive, to be read in one go."""
        await asyncio.sleep(self._coalesce)

    async def _follow(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN to the channels of outboxes added, UNLISTEN those of outboxes gone.

        Each outbox newly listened to looks for work once: what its writers notified
        before the LISTEN (since the relay started, since the connection was lost, or
        since the outbox joined a relay already listening) reached nobody."""
        wanted = set(self._wakes)
        added = wanted - self._listening
        for channel in added:
            await conn.execute(listen_statement("LISTEN", channel))
        for channel in self._listening - wanted:
            await conn.execute(listen_statement("UNLISTEN", channel))
        self._listening = wanted
        for channel in added:
            if (wake := self._wakes.get(channel)) is not None:
                wake()


class WakeListener:
    """Calls ``wake`` when writers NOTIFY on one outbox's channel, at most once per
    ``coalesce`` seconds: a SharedListener with one outbox (a relay of many outboxes
    shares one per database, relay.poll.shared)."""

    def __init__(
        self, session: DbSession, schema: str, wake: Callable[[], None], coalesce: float = 0.0
    ) -> None:
        self._listener = SharedListener(session, coalesce)
        self._schema = schema
        self._wake = wake

    def start(self) -> None:
        self._listener.add(self._schema, self._wake)

    async def stop(self) -> None:
        await self._listener.stop()
