"""Retention: sent rows are deleted in small batches so they never pile up."""

from __future__ import annotations

import asyncio
import logging

import psycopg

from relay.db import DbSession
from relay.errors import RelayError
from relay.outbox_rows import purge_sent
from relay.tasks import BackgroundTask

log = logging.getLogger(__name__)


class RetentionTask:
    def __init__(self, session: DbSession, schema: str, retention: float, every: float) -> None:
        self._session = session
        self._schema = schema
        self._retention = retention
        self._every = every
        self._task = BackgroundTask("retention", self._run)

    def start(self) -> None:
        if self._retention > 0:  # 0: rows are deleted when acknowledged
            self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                deleted = await purge_sent(self._session, self._schema, self._retention)
                if deleted:
                    log.info("retention removed %d sent messages", deleted)
            except (RelayError, psycopg.Error) as exc:
                log.warning("retention purge failed (will retry): %s", exc)
                await self._session.discard()
            await asyncio.sleep(self._every)
