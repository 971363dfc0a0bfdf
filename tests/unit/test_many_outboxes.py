"""Many outboxes in one process, without services: which outboxes a configuration
names, how their probes and metrics combine, and the claim pool's order."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.config import RelayConfig
from relay.fleet_health import FleetHealth, LabelledOutboxMetrics, OutboxProbe
from relay.health import HealthState
from relay.outboxes import (
    OutboxAddress,
    database_labels,
    outbox_addresses,
    split_dsns,
    split_schemas,
)
from relay.poll.poller import claim_session
from relay.poll.shared import claim_pool_size, poll_connections
from relay.shared_sessions import ClaimPool

DSN_A = "postgresql://relay:pw@db-a:5432/orders"
DSN_B = "postgresql://relay:pw@db-b:5432/billing"


def test_every_database_with_every_schema_is_an_outbox_named_without_its_dsn():
    found = outbox_addresses([DSN_A, DSN_B], [["eu", "us"], ["eu", "us"]])
    assert [a.name for a in found] == ["orders/eu", "orders/us", "billing/eu", "billing/us"]
    assert "pw" not in repr(found)


def test_two_databases_of_one_name_are_told_apart_by_their_server():
    labels = database_labels(["postgresql://h1:5432/app", "host=h2 port=5433 dbname=app"])
    assert labels == ["h1:5432/app", "h2:5433/app"]


def test_lists_from_the_environment_split_where_the_values_cannot():
    assert split_schemas("a, b\tc,,d") == ["a", "b", "c", "d"]
    assert split_dsns("postgresql://a/x postgresql://b,c/y\nhost=h dbname=z\n# x\n") == [
        "postgresql://a/x",
        "postgresql://b,c/y",
        "host=h dbname=z",
    ]


def test_a_list_of_outboxes_is_checked_in_plain_sentences():
    config = RelayConfig(
        dsn=DSN_A, dsns=(DSN_A, DSN_A), schemas=("eu", "eu", "pg_x"), schema_pattern=" "
    )
    problems = " ".join(config.problems())
    assert "The same database DSN is given twice" in problems
    assert "The same schema is given twice" in problems
    assert "system schemas" in problems
    assert "The schema pattern is empty" in problems
    assert "pw" not in problems


def test_cdc_names_of_one_outbox_are_refused_for_several():
    config = RelayConfig(dsn=DSN_A, schemas=("eu", "us"), mode="cdc", cdc=_cdc(table="eu.t"))
    assert any("name one outbox's table" in p for p in config.problems())
    single = RelayConfig(dsn=DSN_A, schemas=("eu",), mode="cdc", cdc=_cdc(slot="one"))
    assert single.problems() == []


def test_the_outboxes_of_a_database_share_one_slot_and_publication_in_cdc_mode():
    config = RelayConfig(dsn=DSN_A, schemas=("eu", "us"), mode="cdc")
    names = {
        config.for_outbox(OutboxAddress("db", schema, DSN_A)).cdc.resolve(schema)
        for schema in ("eu", "us")
    }
    assert {(n.slot, n.publication, n.own_name) for n in names} == {
        ("outbox_relay__shared", "outbox_relay__shared", "outbox_relay__shared/eu"),
        ("outbox_relay__shared", "outbox_relay__shared", "outbox_relay__shared/us"),
    }
    named = RelayConfig(dsn=DSN_A, schemas=("eu", "us"), mode="cdc",
                        cdc=_cdc(slot="tenants", publication="tenants"))
    assert named.problems() == []
    one = named.for_outbox(OutboxAddress("db", "eu", DSN_A)).cdc.resolve("eu")
    assert (one.slot, one.publication) == ("tenants", "tenants")
    alone = RelayConfig(dsn=DSN_A, schema="eu", mode="cdc").cdc.resolve("eu")
    assert (alone.slot, alone.own_name) == ("outbox_relay_eu", "outbox_relay_eu")


def _cdc(**names):
    from relay.cdc.settings import CdcSettings

    return CdcSettings(**names)


def test_one_dsn_and_one_schema_stay_a_relay_of_one_outbox():
    assert not RelayConfig(dsn=DSN_A, schemas=("eu",)).many_outboxes
    assert RelayConfig(dsn=DSN_A, schema_pattern="t\\_%").many_outboxes
    assert RelayConfig(dsn=DSN_A, schema_pattern="t\\_%").named_schemas == ()


def test_the_connection_cap_sizes_the_claim_pool_and_refuses_too_few():
    assert poll_connections(RelayConfig(dsn=DSN_A), 200) == 3 + 4
    capped = RelayConfig(dsn=DSN_A, max_db_connections=10)
    assert claim_pool_size(capped) == 6  # 10 - leases, scheduler, listener - sampler
    too_few = RelayConfig(dsn=DSN_A, schemas=("a", "b"), max_db_connections=4)
    assert any("is too few" in p for p in too_few.problems())


def _probe(name: str, health: HealthState, problem: str | None = None) -> OutboxProbe:
    registry = CollectorRegistry()
    Counter("outbox_relay_batches", "Batches.", registry=registry).inc(3)
    database, schema = name.split("/")
    return OutboxProbe(database, schema, health, registry, lambda: problem)


def _ready() -> HealthState:
    health = HealthState()
    health.beat(60)
    health.database_answered()
    return health


def test_ready_while_any_outbox_is_and_the_body_names_the_others():
    probes = [_probe("orders/eu", _ready()), _probe("orders/us", HealthState(), "not migrated")]
    verdict = FleetHealth(lambda: probes).readiness()
    assert verdict.ok
    assert verdict.detail["outbox"] == {"orders/eu": "ok", "orders/us": "not migrated"}
    none_ready = FleetHealth(lambda: probes[1:]).readiness()
    assert not none_ready.ok


def test_metrics_of_every_outbox_are_one_family_with_database_and_schema_labels():
    probes = [_probe("orders/eu", _ready()), _probe("billing/eu", _ready())]
    registry = CollectorRegistry()
    registry.register(LabelledOutboxMetrics(lambda: probes))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    batches = [f for f in families if f.name == "outbox_relay_batches"]
    assert len(batches) == 1
    totals = [s for s in batches[0].samples if s.name.endswith("_total")]
    assert {(s.labels["database"], s.labels["schema"], s.value) for s in totals} == {
        ("orders", "eu", 3.0),
        ("billing", "eu", 3.0),
    }


def test_the_claim_pool_hands_a_returned_connection_to_the_longest_waiter():
    async def scenario() -> list[str]:
        pool = ClaimPool([claim_session(RelayConfig(dsn=DSN_A), 0)])
        held = await pool.take()
        order: list[str] = []

        async def lane(name: str) -> None:
            session = await pool.take()
            order.append(name)
            await pool.give_back(session)

        first = asyncio.create_task(lane("waited first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(lane("waited second"))
        await asyncio.sleep(0)
        await pool.give_back(held)
        order.append("returned")
        barging = await pool.take()  # the lane that just gave it back asks again at once
        order.append("barged")
        await pool.give_back(barging)
        await asyncio.gather(first, second)
        return order

    order = asyncio.run(scenario())
    assert order.index("waited first") < order.index("barged")
    assert order.index("waited second") < order.index("barged")


def test_a_waiter_cancelled_after_being_handed_a_connection_passes_it_on():
    async def scenario() -> bool:
        pool = ClaimPool([claim_session(RelayConfig(dsn=DSN_A), 0)])
        held = await pool.take()
        cancelled = asyncio.create_task(pool.take())
        after = asyncio.create_task(pool.take())
        await asyncio.sleep(0)
        await pool.give_back(held)  # handed to `cancelled`, which is cancelled before it runs
        cancelled.cancel()
        got = await asyncio.wait_for(after, 1)
        return got is held

    assert asyncio.run(scenario())


def test_an_outbox_that_waited_to_start_is_not_reported_stuck_once_it_drains():
    now = [0.0]
    health = HealthState(clock=lambda: now[0])
    health.beat(5, "start")  # waiting for its database, back in 5 s
    health.forget("start")  # started: its loops promise their own beats from now on
    now[0] = 100.0
    assert health.liveness().ok
    health.beat(1, "claim lane 0")
    now[0] = 200.0
    assert not health.liveness().ok
