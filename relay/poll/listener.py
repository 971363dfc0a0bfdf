"""LISTEN for the outbox trigger's NOTIFY: a wake-up hint, never the source of truth.

A missed notification only costs one poll interval; after a reconnect we wake the
poller once, because notifications sent while we were away are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

import psycopg
from psycopg import sql

from relay.backoff import full_jitter
from relay.db import DbSession
from relay.errors import RelayError
from relay.tasks import BackgroundTask

log = logging.getLogger(__name__)


def channel_name(schema: str) -> str:
    return f"{schema}.messages"


def listen_statement(verb: Literal["LISTEN", "UNLISTEN"], channel: str) -> sql.Composed:
    return sql.SQL("{} {}").format(sql.SQL(verb), sql.Identifier(channel))


class WakeListener:
    """Calls ``wake`` when writers NOTIFY, at most once per ``coalesce`` seconds.

    Every notifying transaction sends one notification, so at a high commit rate handling
    each on its own was a large share of the relay's CPU. After a wake-up the listener pauses
    for ``coalesce`` (the poll linger, which the woken poller waits anyway), then reads
    whatever arrived meanwhile in one go and wakes the pollers once for all of it.
    """

    def __init__(
        self, session: DbSession, schema: str, wake: Callable[[], None], coalesce: float = 0.0
    ) -> None:
        self._session = session
        self._channel = channel_name(schema)
        self._wake = wake
        self._coalesce = coalesce
        self._task = BackgroundTask("wake-listener", self._run)
        self._failures = 0

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        await self._session.close()

    async def _run(self) -> None:
        self._failures = 0
        while True:
            try:
                await self._listen()
            except (RelayError, psycopg.Error) as exc:
                await self._session.discard()
                delay = full_jitter(self._failures, base=0.5, cap=15.0)
                self._failures += 1
                log.info("wake-up listener lost its connection (%s); polling meanwhile", exc)
                await asyncio.sleep(delay)

    async def _listen(self) -> None:
        conn = await self._session.connection()
        await conn.execute(listen_statement("LISTEN", self._channel))
        self._failures = 0  # listening again: the next loss starts from a short backoff
        self._wake()
        while True:
            async for _ in conn.notifies(stop_after=1):
                pass  # it yields every notification of the packet: one wake-up covers all
            self._wake()
            if self._coalesce > 0:
                await asyncio.sleep(self._coalesce)
