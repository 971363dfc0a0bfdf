"""Many outboxes in one process, in-process against real PostgreSQL: the outboxes of a
database share a claim pool and take turns on it (relay.poll.shared)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from relay.fleet_service import FleetService
from tests.support.fakes import InMemoryConnector
from tests.support.relays import eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration


def backlog(dsn: str, schema: str, topic: str, count: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            f"INSERT INTO {schema}.messages (topic, key, payload) "  # noqa: S608 (a fixed name)
            "SELECT %s, 'k' || (i %% 40), jsonb_build_object('n', i) "
            "FROM generate_series(1, %s) i",
            (topic, count),
        )


def busy_published(connector: InMemoryConnector) -> int:
    return sum(m.topic == "busy-topic" for m in connector.published)


def test_outboxes_sharing_one_claim_connection_take_turns_after_every_batch(db_dsn):
    for schema in ("busy", "quiet"):
        install_outbox(db_dsn, schema)
    backlog(db_dsn, "busy", "busy-topic", 20_000)
    # 5 connections: leases, scheduler, listener, sampler, and a claim pool of one
    config = relay_config(db_dsn, schemas=("busy", "quiet"), max_db_connections=5, batch_size=100)
    # a broker's few milliseconds per batch: the quiet outbox's wake-up (NOTIFY, then the
    # listener's task) then takes a batch or two of the busy one's, not dozens
    connector = InMemoryConnector(delay=0.005)

    async def scenario() -> tuple[int, int]:
        service = FleetService(config, connector=connector)
        task = asyncio.create_task(service.run())
        try:
            await eventually(lambda: connector.batches > 20, 30, "the backlog to start draining")
            await asyncio.to_thread(backlog, db_dsn, "quiet", "quiet-topic", 5)
            committed_at = connector.batches
            await eventually(
                lambda: any(m.topic == "quiet-topic" for m in connector.published),
                30,
                "the quiet outbox's messages",
            )
            return connector.batches - committed_at, busy_published(connector)
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)

    waited, busy_by_then = asyncio.run(scenario())

    # Served in its turn, a batch or a few after it asked (the wake-up takes its time on
    # a busy machine); a quiet outbox left to wait for the busy one's pauses or its end
    # would see most of the 200 batches go first.
    assert busy_by_then < 10_000, f"{waited} batches ({busy_by_then} messages) went first"


def insert_without_notify(dsn: str, schema: str, topic: str) -> None:
    """A row no NOTIFY announces (as while writers are told not to notify, or while the
    listener reconnects): the outbox's triggers do not fire for a replica session."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            f"INSERT INTO {schema}.messages (topic, key, payload) "  # noqa: S608 (a fixed name)
            "VALUES (%s, 'k', '{}'::jsonb)",
            (topic,),
        )


def test_one_look_per_poll_interval_finds_what_no_notify_announced(db_dsn):
    for schema in ("a", "b"):
        install_outbox(db_dsn, schema)
    config = relay_config(db_dsn, schemas=("a", "b"), poll_interval=0.5)
    connector = InMemoryConnector()

    async def scenario() -> float:
        service = FleetService(config, connector=connector)
        task = asyncio.create_task(service.run())
        try:
            await asyncio.sleep(1.5)  # started, each outbox's first looks done
            await asyncio.to_thread(insert_without_notify, db_dsn, "b", "unannounced")
            return await eventually(
                lambda: any(m.topic == "unannounced" for m in connector.published),
                10,
                "the unannounced message",
            )
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)

    # within the poll interval and a little: the outboxes' own looks are 30 s apart
    assert asyncio.run(scenario()) < 3.0
