"""Claim rounds (relay.poll.rounds): the light claims of a database's outboxes in one
transaction, against real PostgreSQL. Each outbox keeps its own order, dead letters and
key holds, and one whose claim fails drains alone without failing the others' rounds."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

import orjson
import psycopg
import pytest

from relay.fleet_service import FleetService
from relay.poll.rounds import ClaimRound
from relay.poll.shared import PollDatabase
from relay.poll.source import PollSource
from tests.support.fakes import InMemoryConnector
from tests.support.relays import eventually, execute, install_outbox, relay_config

pytestmark = pytest.mark.integration

SCHEMAS = ("a", "b", "c")


def claim_round(service: FleetService) -> ClaimRound:
    (database,) = service.databases.values()
    assert isinstance(database.share, PollDatabase)
    return database.share.claim_round


def write_together(dsn: str, rows: list[tuple[str, str, str, int]]) -> None:
    """(schema, topic, key, n) rows in one transaction: one commit, one NOTIFY each."""
    with psycopg.connect(dsn) as conn:
        for schema, topic, key, n in rows:
            conn.execute(
                f"INSERT INTO {schema}.messages (topic, key, payload) "  # noqa: S608 (fixed names)
                "VALUES (%s, %s, jsonb_build_object('n', %s::int))",
                (topic, key, n),
            )


def dead_letters(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT topic FROM {schema}.dead_letters").fetchall()  # noqa: S608
    return [str(topic) for (topic,) in rows]


def running_fleet(
    dsn: str, schemas: tuple[str, ...], connector: InMemoryConnector,
    scenario: Callable[[FleetService], Awaitable[None]],
) -> None:  # fmt: skip
    for schema in schemas:
        install_outbox(dsn, schema)
    config = relay_config(dsn, schemas=schemas)

    async def run() -> None:
        service = FleetService(config, connector=connector)
        task = asyncio.create_task(service.run())
        try:
            await eventually(lambda: bool(service.databases), 10, "the outboxes to start")
            await scenario(service)
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(run())


def test_outboxes_notified_together_claim_in_one_round_each_in_its_own_key_order(db_dsn):
    connector = InMemoryConnector()
    commits = 40

    async def scenario(service: FleetService) -> None:
        for i in range(commits):
            rows = [(schema, f"{schema}-topic", f"k{i % 3}", i) for schema in SCHEMAS]
            await asyncio.to_thread(write_together, db_dsn, rows)
        await eventually(
            lambda: len(connector.published) == commits * len(SCHEMAS), 15, "every message"
        )

    running_fleet(db_dsn, SCHEMAS, connector, scenario)
    by_key: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for message in connector.published:
        by_key[message.topic, message.key].append(orjson.loads(message.payload or b"")["n"])
    for numbers in by_key.values():
        assert numbers == sorted(numbers)
    assert len(by_key) == 3 * len(SCHEMAS)


def test_rounds_carry_several_outboxes(db_dsn):
    connector = InMemoryConnector()
    rounds: list[ClaimRound] = []

    async def scenario(service: FleetService) -> None:
        rounds.append(claim_round(service))
        for i in range(20):
            rows = [(schema, "t", "k", i) for schema in SCHEMAS]
            await asyncio.to_thread(write_together, db_dsn, rows)
        await eventually(lambda: len(connector.published) == 20 * len(SCHEMAS), 15, "all")

    running_fleet(db_dsn, SCHEMAS, connector, scenario)
    (shared,) = rounds
    assert shared.largest >= 2, "each outbox claimed in a round of its own"
    assert shared.claims > shared.rounds
    assert shared.failed == 0


def test_an_outbox_whose_claim_fails_drains_alone_and_the_others_keep_their_rounds(db_dsn):
    connector = InMemoryConnector()

    async def scenario(service: FleetService) -> None:
        shared = claim_round(service)
        await asyncio.to_thread(write_together, db_dsn, [("a", "a", "k", 0), ("b", "b", "k", 0)])
        await eventually(lambda: len(connector.published) == 2, 10, "the first messages")
        # In a thread: the rename waits for any claim transaction of b's in flight.
        await asyncio.to_thread(execute, db_dsn, "ALTER TABLE b.messages RENAME TO gone")
        await asyncio.to_thread(execute, db_dsn, 'NOTIFY "b.messages"')  # b claims, and fails
        await eventually(lambda: shared.failed > 0, 10, "b's failing claim in a round")
        failed, rounds = shared.failed, shared.rounds
        for i in range(1, 21):
            await asyncio.to_thread(write_together, db_dsn, [("a", "a", "k", i)])
            await asyncio.to_thread(execute, db_dsn, 'NOTIFY "b.messages"')
            await asyncio.sleep(0.05)  # b's retries alone, every retry_cap at most, go on
        await eventually(lambda: len(connector.published) == 22, 10, "a's messages")
        assert shared.rounds - rounds >= 10, "a no longer claims in rounds"
        assert shared.failed == failed, "b failed the shared rounds again"

    running_fleet(db_dsn, ("a", "b"), connector, scenario)


def test_a_dead_letter_in_a_round_is_its_own_outboxs(db_dsn):
    connector = InMemoryConnector()
    connector.fail_topic("poison", permanently=True)

    async def scenario(service: FleetService) -> None:
        await asyncio.to_thread(
            write_together, db_dsn, [("a", "poison", "k", 0), ("b", "fine", "k", 0)]
        )
        await asyncio.to_thread(
            write_together, db_dsn, [("a", "behind", "k", 1), ("b", "fine", "k", 1)]
        )
        await eventually(
            lambda: sum(m.topic == "fine" for m in connector.published) == 2, 10, "b's messages"
        )
        await eventually(
            lambda: dead_letters(db_dsn, "a") == ["poison"], 10, "a's poison message parked"
        )
        await asyncio.sleep(0.5)  # a's key stays held: what follows it is not published
        assert not any(m.topic == "behind" for m in connector.published)
        assert claim_round(service).claims > 0

    running_fleet(db_dsn, ("a", "b"), connector, scenario)
    assert dead_letters(db_dsn, "b") == []


def leased(service: FleetService, schema: str) -> frozenset[int]:
    for runner in service.runners.values():
        source = runner.source
        if runner.address.schema == schema and isinstance(source, PollSource):
            return source.leases.owned if source.leases.holds_valid_leases() else frozenset()
    return frozenset()


def buckets_of(dsn: str, schema: str) -> dict[str, int]:
    """Each message's bucket, by id (the rows stay, marked sent, under --retention)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT id, bucket FROM {schema}.messages").fetchall()  # noqa: S608
    return {str(message_id): int(bucket) for message_id, bucket in rows}


def test_two_relays_in_rounds_each_claim_only_the_buckets_they_lease(db_dsn):
    """Each outbox shared out between two relays: every message a relay's rounds
    published was in a bucket that relay leased, in that outbox, and went out once."""
    schemas = ("a", "b")
    for schema in schemas:
        install_outbox(db_dsn, schema)
    config = relay_config(db_dsn, schemas=schemas, retention=3600.0)
    connectors = (InMemoryConnector(), InMemoryConnector())
    owned: list[dict[str, frozenset[int]]] = []

    async def scenario() -> None:
        services = [FleetService(config, connector=c) for c in connectors]
        tasks = [asyncio.create_task(service.run()) for service in services]
        try:
            await eventually(
                lambda: all(len(leased(s, schema)) == 128 for s in services for schema in schemas),
                15,
                "an even split of each outbox",
            )
            for i in range(40):
                rows = [(schema, schema, f"k{i % 20}", i) for schema in schemas]
                await asyncio.to_thread(write_together, db_dsn, rows)
            await eventually(
                lambda: sum(len(c.published) for c in connectors) == 80, 15, "every message"
            )
            owned.extend({schema: leased(s, schema) for schema in schemas} for s in services)
            assert all(claim_round(s).claims > 0 for s in services)
        finally:
            for service in services:
                service.request_stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(scenario())
    buckets = {schema: buckets_of(db_dsn, schema) for schema in schemas}
    ids = [str(m.id) for c in connectors for m in c.published]
    assert len(ids) == len(set(ids)) == 80
    for connector, leases in zip(connectors, owned, strict=True):
        assert connector.published, "one relay claimed everything"
        for message in connector.published:
            assert buckets[message.topic][str(message.id)] in leases[message.topic]
