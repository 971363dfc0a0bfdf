"""CDC over two tenant schemas of one database through one slot, with the installed
command and a real RabbitMQ: a message the broker refuses for good becomes a dead letter
of its own tenant, the messages of its key wait in that tenant's table while the other
tenant streams on, and `dead-letters retry` publishes them in order; a delayed message of
the other tenant goes out when due (docs/multi-tenant.md, docs/cdc.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from psycopg import sql

from relay.migrations import migrate
from tests.faults.conftest import rabbit_args
from tests.faults.support import wait_for
from tests.support.cli import outbox_relay

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

CDC = ["--mode", "cdc", "--cdc-takeover-ttl", "2s", "--cdc-heartbeat", "1s"]
TENANTS = ("tenant_a", "tenant_b")


@pytest.fixture
def tenants(outbox: str) -> str:
    with psycopg.connect(outbox, autocommit=True) as conn:
        for schema in TENANTS:
            migrate(conn, schema)
    return outbox


def enqueue(dsn: str, schema: str, topic: str | None, key: str, n: int,
            deliver_at: datetime | None = None) -> None:
    statement = sql.SQL("SELECT {}.enqueue(%s, %s, %s::jsonb, '{{}}', %s)").format(
        sql.Identifier(schema))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, (topic, key, orjson.dumps({"n": n}).decode(), deliver_at))


def set_aside(dsn: str, schema: str) -> int:
    """Messages the relay set aside in ``schema``'s table, still to publish."""
    statement = sql.SQL(
        "SELECT count(*) FROM {}.messages WHERE set_aside_at IS NOT NULL AND sent_at IS NULL"
    ).format(sql.Identifier(schema))
    with psycopg.connect(dsn) as conn:
        row = conn.execute(statement).fetchone()
    return int(row[0]) if row else 0


def dead_letters(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.dead_letters").format(sql.Identifier(schema))
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def test_a_poison_message_of_one_tenant_parks_its_key_alone_and_retry_restores_its_order(
    tenants, rabbit, relays
):
    good, nowhere = rabbit.new_topic(), rabbit.unroutable_topic()
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange), *CDC,
                   "--schema", TENANTS[0], "--schema", TENANTS[1], dsn=tenants)
    relay.wait_for_log("streaming slot", 30)
    enqueue(tenants, "tenant_a", nowhere, "K", 0)  # refused for good: a dead letter
    for n in range(1, 4):
        enqueue(tenants, "tenant_a", nowhere, "K", n)  # K is held: these wait
    for n in range(20):
        enqueue(tenants, "tenant_b", good, f"b{n % 4}", n)
    due = datetime.now(UTC) + timedelta(seconds=3)
    enqueue(tenants, "tenant_b", good, "later", 100, deliver_at=due)

    wait_for(lambda: dead_letters(tenants, "tenant_a") == 1, 30, "tenant_a's dead letter")
    wait_for(lambda: set_aside(tenants, "tenant_a") == 3, 30, "K's others to wait")
    got = rabbit.read(good, 21, timeout=30)
    arrived = time.time()
    assert sorted(orjson.loads(r.value)["n"] for r in got) == [*range(20), 100]
    assert dead_letters(tenants, "tenant_b") == 0
    assert arrived - due.timestamp() < 10  # the delayed message went out when due

    rabbit._run(lambda ch: rabbit._declare_queue(ch, nowhere, f"{nowhere}.q"))
    rabbit._queues[nowhere] = f"{nowhere}.q"
    retried = outbox_relay("dead-letters", "retry", "--key", "K", "--dsn", tenants,
                           "--schema", "tenant_a")
    assert retried.returncode == 0, retried.stderr
    started = time.monotonic()
    assert [orjson.loads(r.value)["n"] for r in rabbit.read(nowhere, 4, timeout=20)] == [
        0, 1, 2, 3]
    # Found by the shared look within a --poll-interval or so, not the drain's own 30 s.
    assert time.monotonic() - started < 10
    wait_for(lambda: set_aside(tenants, "tenant_a") == 0, 10, "tenant_a's table to empty")
    assert relay.terminate() == 0
