"""Delayed messages in PostgreSQL: where they wait, how they join the outbox, and that
nothing else the relay writes is mistaken for one. Runs the relay's own Scheduler and
SQL against a real PostgreSQL (the e2e tests run the installed command end to end)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from relay import enqueue
from relay.db import DbSession
from relay.deadletters import retry_dead_letters
from relay.migrations import migrate
from relay.scheduler import Scheduler
from relay.sqlfiles import query
from tests.support.old_outbox import old_outbox
from tests.support.relays import RunningRelay, eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration

DELAYED = (
    "INSERT INTO outbox.messages (topic, key, payload, available_at) "
    "VALUES ('t', %s, %s, now() + make_interval(secs => %s)) RETURNING id"
)


def insert_delayed(conn, key, payload, delay):
    return conn.execute(DELAYED, (key, payload, delay)).fetchone()[0]


def outbox_order(conn):
    """The payloads of the outbox's rows in seq order: the order a relay claims them."""
    return [row[0] for row in conn.execute(
        "SELECT payload::jsonb FROM outbox.messages ORDER BY seq"
    )]


def scheduler(dsn, chunk=1000):
    session = DbSession(dsn, "scheduler", connect_timeout=5)
    return Scheduler(session, "outbox", recheck=lambda: 30.0, chunk=chunk)


async def promote(dsn, chunk=1000):
    sched = scheduler(dsn, chunk)
    try:
        return await sched.promote_due()
    finally:
        await sched.stop()


def test_a_delayed_insert_waits_in_the_scheduled_table_and_returns_its_id(db_dsn):
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        delayed = insert_delayed(conn, "k", '{"n": 0}', 60)
        plain = enqueue(conn, topic="t", key="k", payload={"n": 1})
        past = conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at) "
            "VALUES ('t', 'k', '{\"n\": 2}', now() - interval '1 minute') RETURNING id"
        ).fetchone()[0]
        in_outbox = {r[0] for r in conn.execute("SELECT id FROM outbox.messages")}
        waiting = conn.execute("SELECT id, key, payload::text FROM outbox.scheduled").fetchall()
    assert in_outbox == {plain, past}  # not delayed: a time in the past means now
    assert waiting == [(delayed, "k", '{"n": 0}')]


def test_due_messages_join_the_outbox_in_due_order_behind_what_was_committed(db_dsn):
    """Each due message gets a seq when it joins: after the key's messages committed
    while it waited, before those committed after. Messages not due stay."""
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        insert_delayed(conn, "k", '{"d": "later"}', 0.6)
        insert_delayed(conn, "k", '{"d": "sooner"}', 0.3)
        insert_delayed(conn, "k", '{"d": "tomorrow"}', 86400)
        enqueue(conn, topic="t", key="k", payload={"a": 1})
        conn.execute("SELECT pg_sleep(0.7)")
        result = asyncio.run(promote(db_dsn))
        enqueue(conn, topic="t", key="k", payload={"b": 2})
        order = outbox_order(conn)
        left = conn.execute("SELECT payload::text FROM outbox.scheduled").fetchall()
    assert (result.moved, result.promoted, result.held) == (2, 2, True)
    assert 86000 < result.next_due_in <= 86400
    assert order == [{"a": 1}, {"d": "sooner"}, {"d": "later"}, {"b": 2}]
    assert left == [('{"d": "tomorrow"}',)]


def test_promotion_moves_a_backlog_in_chunks_and_keeps_the_order(db_dsn):
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at) "
            "SELECT 't', 'k', json_build_object('n', n), now() + interval '10 ms' "
            "FROM generate_series(1, 25) n"
        )
        conn.execute("SELECT pg_sleep(0.05)")
        result = asyncio.run(promote(db_dsn, chunk=10))
        order = outbox_order(conn)
    assert (result.moved, result.promoted, result.next_due_in) == (25, 25, None)
    assert order == [{"n": n} for n in range(1, 26)]


def test_a_relay_without_the_promotion_lock_moves_nothing(db_dsn):
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn) as holder, psycopg.connect(db_dsn, autocommit=True) as conn:
        insert_delayed(conn, "k", '{"n": 0}', 0.001)
        conn.execute("SELECT pg_sleep(0.01)")
        holder.execute(
            "SELECT pg_advisory_xact_lock(%(lock_space)s, %(lock_key)s)",
            scheduler(db_dsn)._params,
        )  # another relay promoting right now
        blocked = asyncio.run(promote(db_dsn))
        holder.rollback()
        free = asyncio.run(promote(db_dsn))
    assert (blocked.moved, blocked.held) == (0, False)
    assert (free.moved, free.held) == (1, True)


def test_a_retried_dead_letter_keeps_its_seq_and_is_not_taken_for_a_delayed_one(db_dsn):
    """A dead letter goes back with its old created_at: it must not look delayed."""
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        first = enqueue(conn, topic="t", key="k", payload={"n": 0})
        conn.execute(query("dead_letter", "outbox"), {
            "seqs": "{1}", "errors": ["refused"], "reasons": ["permanent"]})
        enqueue(conn, topic="t", key="k", payload={"n": 1})
        conn.execute("SELECT pg_sleep(0.01)")
        assert retry_dead_letters(conn, "outbox", [1]) == 1
        rows = conn.execute("SELECT seq, id FROM outbox.messages ORDER BY seq").fetchall()
        scheduled = conn.execute("SELECT count(*) FROM outbox.scheduled").fetchone()[0]
    assert rows[0] == (1, first) and scheduled == 0


def test_upgrading_moves_delayed_rows_and_leaves_keyless_retries(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old_outbox(conn, through=7)
        delayed = insert_delayed(conn, "k", '{"n": 0}', 60)
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at, attempts) "
            "VALUES ('t', NULL, '{\"retry\": 1}', now() + interval '5 s', 1)"
        )
        migrate(conn, "outbox", tracks=("outbox",))
        left = conn.execute("SELECT payload::text FROM outbox.messages").fetchall()
        moved = conn.execute("SELECT id FROM outbox.scheduled").fetchall()
    assert left == [('{"retry": 1}',)] and moved == [(delayed,)]


def test_an_idle_relay_sends_itself_no_wake_ups(db_dsn):
    """Looking for due messages must not NOTIFY: an INSERT fires the outbox's statement
    trigger even when it inserts nothing, and each NOTIFY pokes the scheduler again."""
    install_outbox(db_dsn)
    config = relay_config(db_dsn, poll_interval=30.0)

    async def scenario() -> int:
        listener = await psycopg.AsyncConnection.connect(db_dsn, autocommit=True)
        async with listener, RunningRelay(config) as relay:
            await listener.execute('LISTEN "outbox.messages"')
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                enqueue(conn, topic="t", key="k", payload={"n": 0})
            await eventually(lambda: len(relay.connector.published) == 1, 10, "the message")
            seen = 0
            async for _ in listener.notifies(timeout=1.5):
                seen += 1
            return seen

    assert asyncio.run(scenario()) == 0


def test_a_message_due_at_infinity_is_refused_in_one_sentence(db_dsn):
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="scheduled_due_is_finite"):
            conn.execute("INSERT INTO outbox.messages (topic, key, payload, available_at) "
                         "VALUES ('t', 'k', '{}', 'infinity')")
        count = conn.execute("SELECT count(*) FROM outbox.messages").fetchone()[0]
    assert count == 0
