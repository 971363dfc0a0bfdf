"""A shared slot's leader writes several outboxes' cdc_state rows in one query
(``Leadership.guarded_together``): all or nothing, and never for a lost lead."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from relay.cdc.leader import Leadership
from relay.cdc.queries import cdc_query
from relay.cdc.settings import CdcSettings
from relay.db import DbSession
from relay.errors import LeaseLostError
from tests.support.relays import execute, install_outbox

pytestmark = pytest.mark.integration

SCHEMAS = ("tenant_a", "tenant_b", "tenant_c")


def confirmed(dsn: str) -> dict[str, str | None]:
    found = {}
    with psycopg.connect(dsn) as conn:
        for schema in SCHEMAS:
            if conn.execute("SELECT to_regclass(%s)", (f"{schema}.cdc_state",)).fetchone()[0]:
                statement = sql.SQL("SELECT confirmed_lsn::text FROM {}.cdc_state").format(
                    sql.Identifier(schema))
                found[schema] = conn.execute(statement).fetchone()[0]
    return found


def saves(lsn: str, schemas=SCHEMAS):
    return [(cdc_query("save_progress", schema), {"lsn": lsn}) for schema in schemas]


def test_the_outboxes_positions_are_written_together_all_or_nothing(db_dsn):
    for schema in SCHEMAS:
        install_outbox(db_dsn, schema)

    async def scenario():
        names = CdcSettings(shared=True).resolve(SCHEMAS[0])
        session = DbSession(db_dsn, "cdc-leader", connect_timeout=5)
        lead = Leadership(session, names, relay_id=uuid4(), relay_name="test", ttl=10,
                          heartbeat_interval=0, published=lambda: 0)
        stopping = asyncio.Event()
        assert await lead.acquire(stopping)
        try:
            for schema in SCHEMAS[1:]:
                await lead.cover(schema)
            together = await lead.guarded_together(saves("0/10"))
            first = await asyncio.to_thread(confirmed, db_dsn)
            # In a thread: DROP SCHEMA may wait for the leader's own transaction.
            await asyncio.to_thread(execute, db_dsn, "DROP SCHEMA tenant_c CASCADE")
            after_drop = await lead.guarded_together(saves("0/20"))
            unchanged = await asyncio.to_thread(confirmed, db_dsn)
            await asyncio.to_thread(  # another relay leads
                execute, db_dsn, "UPDATE tenant_b.cdc_state SET leader_id = gen_random_uuid()")
            with pytest.raises(LeaseLostError):
                await lead.guarded_together(saves("0/30", SCHEMAS[:2]))
            return together, first, after_drop, unchanged, lead.lost.is_set()
        finally:
            await lead.release()

    together, first, after_drop, unchanged, lost = asyncio.run(scenario())
    assert together is True
    assert first == dict.fromkeys(SCHEMAS, "0/10")
    assert after_drop is False  # tenant_c's statement failed: nothing was written
    assert unchanged == {"tenant_a": "0/10", "tenant_b": "0/10"}
    assert lost
