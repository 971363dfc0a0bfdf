"""The looks for delayed messages that NOTIFYs ask for, a database's outboxes together
(relay.poll.due_looks), against real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
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


def looked(service: FleetService) -> bool:
    """Both outboxes run, and each one's scheduler has looked at its table."""
    if len(service.runners) != 2 or not all(r.source for r in service.runners.values()):
        return False
    return all(source(service, s).scheduler.next_look < math.inf for s in ("a", "b"))


def in_fleet(dsn: str, scenario, ready=looked, **overrides) -> None:  # type: ignore[no-untyped-def]
    for schema in ("a", "b"):
        install_outbox(dsn, schema)
    config = relay_config(dsn, schemas=("a", "b"), **overrides)

    async def run() -> None:
        connector = InMemoryConnector()
        service = FleetService(config, connector=connector)
        task = asyncio.create_task(service.run())
        try:
            await eventually(lambda: ready(service), 10, "both outboxes' first looks")
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


def test_a_delayed_message_written_before_the_relay_registered_is_promoted_when_due(db_dsn):
    """Writers skip the NOTIFY while no polling relay's row is live. A delayed message
    written after the relay's scheduler looked, but before its first heartbeat committed,
    woke nobody: the heartbeat makes the relay look once, so it is not left to the shared
    look (every poll interval, 5 s)."""
    def listening(service: FleetService) -> bool:
        return looked(service) and source(service, "b").activity()[0] > 0  # LISTEN woke it

    install_outbox(db_dsn, "b")
    holder = psycopg.connect(db_dsn)
    holder.execute("LOCK TABLE b.relays IN SHARE MODE")  # a writer's SELECT still passes

    async def scenario(service: FleetService, connector: InMemoryConnector) -> None:
        await asyncio.sleep(0.5)  # the due look that LISTEN asked for is done too
        await asyncio.to_thread(write, db_dsn, "b", "later", 1.0)
        written = time.monotonic()
        holder.commit()  # the heartbeat goes through
        await eventually(lambda: bool(connector.published), 10, "the delayed message")
        assert 0.9 <= time.monotonic() - written < 2.5

    try:
        in_fleet(db_dsn, scenario, ready=listening, poll_interval=5.0)
    finally:
        holder.close()
