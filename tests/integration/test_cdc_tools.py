"""Preflight checks (``doctor``), ``cdc_status``, and capturing a Debezium outbox table."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from uuid import uuid4

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from relay.cdc.preflight import require_ready, run_checks
from relay.cdc.settings import CdcSettings
from relay.cdc.status import cdc_status, format_cdc_status
from relay.errors import PermanentError
from tests.integration.test_cdc_stream import write
from tests.support.cdc_relays import FAST_CDC, RunningCdcRelay, cdc_config, eventually
from tests.support.relays import install_outbox, relay_config

pytestmark = pytest.mark.integration


def failed(checks):
    return {check.name: check.detail for check in checks if not check.ok}


def test_doctor_passes_on_a_ready_database(db_dsn):
    install_outbox(db_dsn)
    checks = run_checks(db_dsn, cdc_config(db_dsn))
    assert failed(checks) == {}
    names = [check.name for check in checks]
    assert names[:2] == ["database", "outbox schema"]
    assert {"wal_level", "replication privilege", "replication slots", "wal senders",
            "publication", "captured table", "replication connection"} <= set(names)


def test_doctor_in_poll_mode_checks_only_the_database_and_schema(db_dsn):
    checks = run_checks(db_dsn, relay_config(db_dsn))
    assert [c.name for c in checks] == ["database", "outbox schema"]
    assert "migrate" in failed(checks)["outbox schema"]


def test_doctor_explains_a_role_without_replication_and_a_foreign_publication(db_dsn):
    install_outbox(db_dsn)
    role = f"plain_{uuid4().hex[:8]}"
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA outbox TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA outbox TO {role}")
        conn.execute("CREATE TABLE other (id int)")
        conn.execute("CREATE PUBLICATION outbox_relay_outbox FOR TABLE other")
    try:
        dsn = make_conninfo(db_dsn, user=role)
        problems = failed(run_checks(dsn, cdc_config(dsn)))
    finally:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    assert f"ALTER ROLE {role} WITH REPLICATION" in problems["replication privilege"]
    assert "ALTER PUBLICATION outbox_relay_outbox ADD TABLE outbox.messages" in (
        problems["publication"])
    assert "replication connection" in problems


def test_doctor_names_an_unreachable_database():
    checks = run_checks("postgresql://nobody@127.0.0.1:1/none", cdc_config("host=x"))
    assert [(c.name, c.ok) for c in checks] == [("database", False)]
    assert "cannot connect" in checks[0].detail


def test_cdc_status_shows_the_slot_lag_and_the_leader(db_dsn):
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            ids = await asyncio.to_thread(write, db_dsn, 20)
            await eventually(lambda: len(running.connector.published) >= len(ids), 10, "events")
            await asyncio.sleep(0.5)
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                return cdc_status(conn, "outbox")

    status = asyncio.run(scenario())
    assert status["exists"] and status["active"] and status["snapshot_done"]
    assert status["wal_status"] == "reserved"
    assert 0 <= status["lag_bytes"] < 1 << 20
    assert status["leader"]
    assert "cdc lag:" in format_cdc_status(status)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        assert cdc_status(conn, "outbox", slot="nope")["exists"] is False


DEBEZIUM_TABLE = """
CREATE SCHEMA app;
CREATE TABLE app.outbox (
  id uuid PRIMARY KEY,
  aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL,
  type varchar(255) NOT NULL,
  payload jsonb,
  tenant text,
  amount numeric
)"""


def test_a_debezium_outbox_table_is_routed_by_aggregate(db_dsn, caplog):
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(DEBEZIUM_TABLE)
        conn.execute("INSERT INTO app.outbox VALUES (gen_random_uuid(), 'Old', '1', 'Done', "
                     "'{}', NULL, NULL)")  # already there: not published again
    settings = dataclasses.replace(FAST_CDC, table="app.outbox", debezium=True)

    def emit_events():
        ids = [uuid4() for _ in range(3)]
        with psycopg.connect(db_dsn, autocommit=True) as conn, conn.transaction():
            for n, ident in enumerate(ids):
                conn.execute("INSERT INTO app.outbox VALUES (%s, 'Order', %s, 'OrderCreated', "
                             "%s::jsonb, 'acme', 9.5)", (ident, f"order-{n}", f'{{"n": {n}}}'))
            conn.execute("DELETE FROM app.outbox WHERE aggregatetype = 'Order'")
        return ids

    async def scenario():
        with caplog.at_level(logging.WARNING, logger="relay.cdc"):
            async with RunningCdcRelay(cdc_config(db_dsn), settings=settings) as running:
                await running.streaming()
                ids = await asyncio.to_thread(emit_events)
                await eventually(lambda: len(running.connector.published) >= 3, 10, "events")
                await asyncio.sleep(0.2)
                return ids, running.connector.published

    ids, published = asyncio.run(scenario())
    assert [m.id for m in published] == ids
    assert [(m.topic, m.key, m.payload) for m in published] == [
        ("Order", f"order-{n}", b'{"n": %d}' % n) for n in range(3)]
    # ``id`` as Debezium's router sends it; the topic prefix is the template's (relay.formats)
    assert published[0].headers == {"type": "OrderCreated", "tenant": "acme", "id": str(ids[0])}
    assert any("amount" in r.getMessage() for r in caplog.records)  # numeric: not a header


def test_cdc_settings_problems_stop_the_relay_before_it_starts(db_dsn):
    with pytest.raises(Exception, match="--cdc-table"):
        RunningCdcRelay(cdc_config(db_dsn), settings=CdcSettings(debezium=True))


def test_require_ready_names_every_failed_check(db_dsn):
    with pytest.raises(PermanentError, match=r"outbox schema: .*migrate"):
        require_ready(cdc_config(db_dsn))
    install_outbox(db_dsn)
    require_ready(cdc_config(db_dsn))
