"""Relays of different outboxes on one slot (--cdc-slot): the standby says which of its
outboxes the leader does not stream, and never fences a leader over a lease row that
leader does not hold (relay.cdc.leader, relay.cdc.cover)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from relay.cdc.leader import Leadership, StandbyView
from relay.cdc.slot_lock import leader_session
from relay.health import HealthState
from tests.support.cdc_relays import FAST_CDC, RunningCdcRelay, cdc_config, eventually
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration
TTL = FAST_CDC.takeover_ttl
SLOT = "outbox_relay_cover_test"


def left_behind_lease(dsn: str, schema: str) -> None:
    """The lease row a relay leaves in an outbox it led the slot for, then let go of."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.cdc_state (slot_name, leader_id, leader_name, leader_pid,"
                " lease_expires_at) VALUES (%s, gen_random_uuid(), 'gone:1', NULL, '-infinity')"
            ).format(sql.Identifier(schema)),
            (SLOT,),
        )


def ready(health: HealthState) -> tuple[bool, str | None]:
    verdict = health.readiness()
    return verdict.ok, verdict.detail.get("unready")


def test_a_standby_of_an_outbox_the_leader_does_not_select_reports_it_and_fences_nobody(
    db_dsn,
):
    install_outbox(db_dsn, "tenant_a")
    install_outbox(db_dsn, "tenant_c")
    left_behind_lease(db_dsn, "tenant_c")
    on_slot = replace(FAST_CDC, slot=SLOT)

    async def scenario() -> None:
        leader = RunningCdcRelay(cdc_config(db_dsn, schema="tenant_a"), settings=on_slot)
        standby = RunningCdcRelay(cdc_config(db_dsn, schema="tenant_c"), settings=on_slot)
        await leader.__aenter__()
        await leader.streaming()
        standby.health.database_answered()
        standby.health.beat(60)
        await standby.__aenter__()
        await asyncio.sleep(TTL * 2)  # rounds of a standby that once would fence the leader
        assert leader.relay.leadership.is_leader and not leader.relay.leadership.lost.is_set()
        assert not standby.relay.streaming.is_set()
        await eventually(lambda: ready(standby.health)[1] is not None, 10, "the report")
        ok, reason = ready(standby.health)
        assert not ok and reason is not None
        assert "not streamed" in reason and SLOT in reason, reason
        await leader.stop()  # now the standby leads, and its outbox is served
        await standby.streaming(15)
        await eventually(lambda: ready(standby.health)[1] is None, 5, "the report cleared")
        await standby.stop()

    asyncio.run(scenario())


def _leadership(dsn: str, schemas: list[str], name: str) -> Leadership:
    settings = replace(FAST_CDC, slot=SLOT, shared=True)
    config = cdc_config(dsn, schema=schemas[0])
    leadership = Leadership(
        leader_session(config, TTL), settings.resolve(schemas[0]), relay_id=uuid4(),
        relay_name=name, ttl=TTL, heartbeat_interval=0, published=lambda: 0,
    )
    leadership.schemas = list(schemas)
    return leadership


def test_a_standby_reads_every_lease_at_once_and_skips_an_outbox_dropped_meanwhile(db_dsn):
    for schema in ("tenant_a", "tenant_b", "tenant_c"):
        install_outbox(db_dsn, schema)

    async def scenario() -> list[StandbyView | None]:
        leader = _leadership(db_dsn, ["tenant_a", "tenant_b"], "leader:1")
        standby = _leadership(db_dsn, ["tenant_a", "tenant_c", "tenant_gone"], "standby:2")
        views = []
        try:
            assert await leader._try_claim()
            views.append(await standby._standby_round())  # tenant_gone never was
            standby.schemas = ["tenant_a", "tenant_b", "tenant_c"]
            views.append(await standby._standby_round())
            await leader.release()
            views.append(await standby._standby_round())  # nobody holds the lock
        finally:
            await leader.release()
            await standby.release(forget=True)
        return views

    views = asyncio.run(scenario())
    assert views == [StandbyView("leader:1", ("tenant_c",)),
                     StandbyView("leader:1", ("tenant_c",)), None]
