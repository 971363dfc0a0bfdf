"""The looks for delayed messages that NOTIFYs ask for, a database's outboxes together
(relay.poll.due_looks), against real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from relay.fleet_service import FleetService
from relay.poll.source import PollSource
from tests.support.fakes import InMemoryConnector
from tests.support.relays import eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration


def write(dsn: str, schema: str, topic: str, delay: float = 0.0) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            f"INSERT INTO {schema}.messages (topic, key, payload, available_at) "  # noqa: S608
            "VALUES (%s, 'k', '{}'::jsonb, now() + make_interval(secs => %s))",
            (topic, delay),
        )


def source(service: FleetService, schema: str) -> PollSource:
    (found,) = (
        runner.source
        for runner in service.runners.values()
        if runner.address.schema == schema and isinstance(runner.source, PollSource)
    )
    return found


def in_fleet(dsn: str, scenario, **overrides) -> None:  # type: ignore[no-untyped-def]
    for schema in ("a", "b"):
        install_outbox(dsn, schema)
    config = relay_config(dsn, schemas=("a", "b"), **overrides)

    async def run() -> None:
        connector = InMemoryConnector()
        service = FleetService(config, connector=connector)
        task = asyncio.create_task(service.run())
        try:
            await eventually(
                lambda: all(source(service, s).scheduler.looks for s in ("a", "b"))
                if len(service.runners) == 2 and all(r.source for r in service.runners.values())
                else False,
                10,
                "both outboxes' first looks",
            )
            await scenario(service, connector)
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(run())


def test_notified_outboxes_do_not_each_look_for_delayed_messages(db_dsn):
    async def scenario(service: FleetService, connector: InMemoryConnector) -> None:
        scheduler = source(service, "a").scheduler
        looks = scheduler.looks
        for _ in range(20):  # about 1.5 s of NOTIFYs: 7 looks of its own, one per MIN_GAP
            await asyncio.to_thread(write, db_dsn, "a", "now")
            await asyncio.sleep(0.05)
        await eventually(lambda: len(connector.published) == 20, 10, "every message")
        assert scheduler.looks - looks <= 1

    in_fleet(db_dsn, scenario)


def test_a_delayed_message_in_a_relay_of_many_is_promoted_when_due(db_dsn):
    async def scenario(service: FleetService, connector: InMemoryConnector) -> None:
        await asyncio.to_thread(write, db_dsn, "b", "later", 1.0)
        written = time.monotonic()
        await eventually(lambda: bool(connector.published), 10, "the delayed message")
        # due after 1 s; the shared look for work (every poll interval, 5 s) came later
        assert 0.9 <= time.monotonic() - written < 2.5

    in_fleet(db_dsn, scenario, poll_interval=5.0)
