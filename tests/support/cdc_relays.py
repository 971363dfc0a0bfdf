"""Running CDC relays in-process for integration tests (real PostgreSQL, fake broker)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import psycopg

from relay.cdc.relay import CdcRelay
from relay.cdc.settings import CdcSettings
from relay.config import RelayConfig
from relay.connector import Connector
from relay.health import HealthState
from tests.support.fakes import InMemoryConnector
from tests.support.relays import eventually, relay_config

FAST_CDC = CdcSettings(takeover_ttl=2.0, heartbeat_interval=1.0, linger=0.005)


def cdc_config(dsn: str, **overrides: Any) -> RelayConfig:
    return relay_config(dsn, mode="cdc", **overrides)


class RunningCdcRelay:
    """A CdcRelay in a task on the current loop, with an in-memory broker."""

    def __init__(self, config: RelayConfig, connector: Connector | None = None,
                 settings: CdcSettings = FAST_CDC, health: HealthState | None = None) -> None:
        self.connector: Any = connector or InMemoryConnector()
        self.health = health or HealthState()
        self.relay = CdcRelay(config, self.connector, settings, health=self.health)
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningCdcRelay:
        await self.connector.open()
        self.task = asyncio.create_task(self.relay.run(self.stopping))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def streaming(self, timeout: float = 20) -> None:
        await asyncio.wait_for(self.relay.streaming.wait(), timeout)

    def published_ids(self) -> list[Any]:
        return [message.id for message in self.connector.published]

    async def stop(self) -> None:
        """The graceful way: drain the batch in flight, confirm, hand the lead over."""
        if self.task is not None:
            self.stopping.set()
            await asyncio.wait_for(self.task, 15)
            self.task = None
            await self.relay.close()

    async def crash(self) -> None:
        """As if the process died: no final confirmation, connections just close."""
        if self.task is not None:
            leadership = self.relay.leadership
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            await leadership._keeper.stop()  # cancelled mid-renewal, as a kill would
            self.task = None
            await leadership._session.discard()  # no unlock, no lease release
            await self.relay.outbox.close(timeout=10.0)


class ThreadedCdcRelay:
    """A CdcRelay on an event loop of its own thread, which the test can freeze (like
    SIGSTOP: every connection stays open, nothing runs) and thaw."""

    def __init__(self, config: RelayConfig, settings: CdcSettings = FAST_CDC) -> None:
        self.connector = InMemoryConnector()
        self._config, self._settings = config, settings
        self._loop = asyncio.new_event_loop()
        self._thaw = threading.Event()
        self.relay: CdcRelay | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._call(self._begin()).result(10)

    async def _begin(self) -> None:
        self.relay = CdcRelay(self._config, self.connector, self._settings)
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self.relay.run(self._stopping))

    def streaming(self) -> bool:
        return self.relay is not None and self.relay.streaming.is_set()

    def freeze(self) -> None:
        self._thaw.clear()
        self._loop.call_soon_threadsafe(self._thaw.wait)

    def thaw(self) -> None:
        self._thaw.set()

    def stop(self) -> None:
        self.thaw()
        if self._stopping is not None:
            self._call(self._end()).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _end(self) -> None:
        assert self._stopping is not None and self.relay is not None
        self._stopping.set()
        await asyncio.wait_for(self._task, 15)
        await self.relay.close()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)


def slot_position(dsn: str, slot: str = "outbox_relay_outbox") -> dict[str, Any]:
    """The slot's confirmed position, WAL retained, and the current WAL position."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, active_pid"
            " FROM pg_replication_slots WHERE slot_name = %s", (slot,),
        ).fetchone()
    if row is None:
        return {}
    return {"confirmed": row[0], "retained": row[1], "current": row[2], "active_pid": row[3]}


def wal_position(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        return int(row.fetchone()[0])  # type: ignore[index]


__all__ = ["FAST_CDC", "RunningCdcRelay", "ThreadedCdcRelay", "cdc_config", "eventually",
           "slot_position", "wal_position"]
