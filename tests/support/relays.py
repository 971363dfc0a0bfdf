"""Running relays in-process for integration tests (one event loop, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg

from relay.config import RelayConfig
from relay.migrations import migrate
from relay.service import RelayService
from tests.support.fakes import InMemoryConnector

FAST = {
    "lease_ttl": 2.0,
    "publish_timeout": 0.8,
    "poll_interval": 0.5,
    "retry_base": 0.05,
    "retry_cap": 0.2,
    "shutdown_timeout": 5.0,
    "metrics_port": 0,  # in-process relays share one host: no fixed port
}


def execute(dsn: str, statement: str) -> None:
    """One statement on a connection of its own (call it through asyncio.to_thread from a
    test whose relay runs on the event loop: DDL may wait for the relay's transaction)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def install_outbox(dsn: str, schema: str = "outbox") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn, schema)


def relay_config(dsn: str, schema: str = "outbox", **overrides: Any) -> RelayConfig:
    settings = {**FAST, **overrides}
    return RelayConfig(dsn=dsn, schema=schema, connector="memory", **settings).validate()


class RunningRelay:
    """A RelayService in a task on the current loop."""

    def __init__(self, config: RelayConfig, connector: InMemoryConnector | None = None) -> None:
        self.connector = connector or InMemoryConnector()
        self.service = RelayService(config, connector=self.connector)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningRelay:
        self.task = asyncio.create_task(self.service.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self.service.request_stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)
            self.task = None


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; return the seconds it took, fail with ``what`` otherwise."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started
