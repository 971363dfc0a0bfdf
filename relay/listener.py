"""LISTEN for the outbox trigger's NOTIFY: a wake-up hint, never the source of truth.

A missed notification only costs one poll interval; after a reconnect we wake the
poller once, because notifications sent while we were away are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from relay.backoff import full_jitter
from relay.db import DbSession
from relay.errors import RelayError

log = logging.getLogger("outbox_relay.listener")


def channel_name(schema: str) -> str:
    return f"{schema}.messages"


class WakeListener:
    def __init__(self, session: DbSession, schema: str, wake: Callable[[], None]) -> None:
        self._session = session
        self._channel = channel_name(schema)
        self._wake = wake
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="wake-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
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
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        self._failures = 0  # listening again: the next loss starts from a short backoff
        self._wake()
        async for _ in conn.notifies():
            self._wake()
