"""Many outboxes in one process, in-process against real PostgreSQL: the outboxes of a
database share a claim pool and take turns on it (relay.poll.shared)."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from relay.fleet_service import FleetService
from relay.poll.leases import LeaseKeeper
from relay.poll.shared import PollDatabase
from relay.poll.source import PollSource
from tests.support.fakes import InMemoryConnector
from tests.support.relays import eventually, execute, install_outbox, relay_config

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
    listener reconnects): the outbox's triggers do not fire for a replica session, so
    the row brings its own bucket (admit_message() computes it otherwise)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            f"INSERT INTO {schema}.messages (topic, key, payload, bucket) "  # noqa: S608
            "VALUES (%s, 'k', '{}'::jsonb, (hashtext('k') & 255)::smallint)",
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


def keepers(service: FleetService) -> dict[str, LeaseKeeper]:
    """Each outbox's lease keeper, by schema (while its source runs)."""
    return {
        runner.address.schema: runner.source.leases
        for runner in service.runners.values()
        if isinstance(runner.source, PollSource)
    }


def leased(service: FleetService, schema: str) -> frozenset[int]:
    keeper = keepers(service).get(schema)
    return keeper.owned if keeper is not None and keeper.holds_valid_leases() else frozenset()


def test_two_relays_share_each_outbox_and_a_frozen_ones_leases_lapse(db_dsn):
    """The outboxes of a database renew their leases together (relay.poll.shared's
    LeaseTicker), yet each outbox is shared out on its own, and the leases of a relay
    whose ticks stop lapse by themselves and go to the other."""
    for schema in ("a", "b"):
        install_outbox(db_dsn, schema)
    config = relay_config(db_dsn, schemas=("a", "b"))

    async def scenario() -> None:
        first = FleetService(config, connector=InMemoryConnector())
        second = FleetService(config, connector=InMemoryConnector())
        tasks = [asyncio.create_task(service.run()) for service in (first, second)]
        try:
            await eventually(
                lambda: all(
                    len(leased(service, schema)) == 128
                    for service in (first, second)
                    for schema in ("a", "b")
                ),
                15,
                "an even split of each outbox",
            )
            for schema in ("a", "b"):
                assert not leased(first, schema) & leased(second, schema)
            frozen = keepers(second)
            for database in second.databases.values():
                assert isinstance(database.share, PollDatabase)
                await database.share.lease_ticker.stop()  # no renewal, no hand-back
            await eventually(
                lambda: not any(keeper.holds_valid_leases() for keeper in frozen.values()),
                config.lease_ttl,
                "the frozen relay to stop trusting its leases",
            )
            await eventually(
                lambda: all(len(leased(first, schema)) == 256 for schema in ("a", "b")),
                3 * config.lease_ttl,
                "the live relay to take every bucket of each outbox",
            )
        finally:
            for service in (first, second):
                service.request_stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(scenario())


def test_an_outbox_whose_lease_renewal_fails_does_not_let_the_others_lapse(db_dsn, caplog):
    """b's renewal fails from some tick on: a's leases stay valid, and b ticks alone from
    then on, beside a's query, rather than failing every shared tick."""
    for schema in ("a", "b"):
        install_outbox(db_dsn, schema)
    config = relay_config(db_dsn, schemas=("a", "b"))

    async def scenario() -> None:
        service = FleetService(config, connector=InMemoryConnector())
        task = asyncio.create_task(service.run())
        try:
            await eventually(
                lambda: all(len(leased(service, schema)) == 256 for schema in ("a", "b")),
                15,
                "both outboxes leased",
            )
            # In a thread: ALTER TABLE waits for the lease ticker's transaction, which
            # could never end while this blocked the event loop it runs on.
            await asyncio.to_thread(
                execute, db_dsn, "ALTER TABLE b.bucket_leases RENAME TO bucket_leases_gone")
            await eventually(lambda: not leased(service, "b"), 2 * config.lease_ttl, "b lapsed")
            until = time.monotonic() + 2 * config.lease_ttl
            while time.monotonic() < until:  # a's renewals go on through b's failures
                assert len(leased(service, "a")) == 256
                await asyncio.sleep(0.05)
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    # once, or twice if b's source restarted meanwhile; not at every tick of the test
    shared_failures = [r for r in caplog.records if "lease renewal of" in r.getMessage()]
    assert len(shared_failures) <= 2, [r.getMessage() for r in shared_failures]


def sources(service: FleetService) -> dict[str, PollSource]:
    return {
        runner.address.schema: runner.source
        for runner in service.runners.values()
        if isinstance(runner.source, PollSource)
    }


def test_what_the_relay_sees_of_an_outbox_moves_with_messages_it_cannot_claim(db_dsn):
    """The backlog sampler reads an outbox quiet by Source.activity less often; a message
    the relay cannot claim (another relay leases its bucket) must still move it, through
    the NOTIFY and, unannounced, through the shared look for work."""
    for schema in ("a", "b"):
        install_outbox(db_dsn, schema)
    config = relay_config(db_dsn, schemas=("a", "b"), poll_interval=0.2)

    async def scenario() -> list[bool]:
        service = FleetService(config, connector=InMemoryConnector())
        task = asyncio.create_task(service.run())
        try:
            await eventually(lambda: len(leased(service, "b")) == 256, 15, "b leased")
            await asyncio.to_thread(  # another relay takes every bucket of b
                execute, db_dsn, "UPDATE b.bucket_leases SET relay_id = gen_random_uuid(), "
                "expires_at = now() + interval '1 hour'")
            await eventually(lambda: not leased(service, "b"), 10, "b's leases gone")
            source = sources(service)["b"]
            moved = []
            before = source.activity()
            await asyncio.to_thread(backlog, db_dsn, "b", "t", 1)  # announced by a NOTIFY
            await eventually(lambda: source.activity() != before, 5, "the NOTIFY seen")
            moved.append(True)
            await asyncio.sleep(0.5)  # the shared look wakes b for its row every round
            settled = source.activity()
            await asyncio.sleep(0.5)
            moved.append(source.activity() != settled)
            return moved
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)

    assert asyncio.run(scenario()) == [True, True]
