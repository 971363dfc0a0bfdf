"""The producer role as an attacker would use it: a LOGIN role with exactly what
``outbox-relay migrate --print-grants ROLE --mode producer`` prints (and none of PUBLIC's
defaults) writes events every way there is, and cannot reach the relay's bookkeeping."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

import relay
from tests.support.cli import outbox_relay
from tests.support.roles import grant_printed, login_role, revoke_public_defaults

pytestmark = pytest.mark.e2e


@pytest.fixture
def owned_outbox(db_dsn):
    """The outbox, migrated by its owner, with PUBLIC's default privileges revoked."""
    result = outbox_relay("migrate", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    revoke_public_defaults(db_dsn)
    return db_dsn


def register_listening_relay(dsn: str) -> None:
    """A polling relay waiting for work, so the wake-up trigger goes as far as NOTIFY."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox.relays (relay_id, name, mode, expires_at)"
            " VALUES (gen_random_uuid(), 'waiting', 'poll', now() + interval '1 hour')"
        )


TRAPS = [
    "CREATE FUNCTION trap.now() RETURNS timestamptz",
    "CREATE FUNCTION trap.pg_notify(text, text) RETURNS void",
    "CREATE FUNCTION trap.eq(text, text) RETURNS boolean",
    "CREATE FUNCTION trap.gt(timestamptz, timestamptz) RETURNS boolean",
    "CREATE FUNCTION trap.cat(name, text) RETURNS text",
    "CREATE FUNCTION trap.length(text) RETURNS integer",
    "CREATE FUNCTION trap.hashtext(text) RETURNS integer",
    "CREATE FUNCTION trap.ne(jsonb, jsonb) RETURNS boolean",
    "CREATE FUNCTION trap.band(integer, integer) RETURNS integer",
]
OPERATORS = [
    "CREATE OPERATOR trap.= (FUNCTION = trap.eq, LEFTARG = text, RIGHTARG = text)",
    "CREATE OPERATOR trap.> (FUNCTION = trap.gt, LEFTARG = timestamptz, RIGHTARG = timestamptz)",
    "CREATE OPERATOR trap.|| (FUNCTION = trap.cat, LEFTARG = name, RIGHTARG = text)",
    "CREATE OPERATOR trap.<> (FUNCTION = trap.ne, LEFTARG = jsonb, RIGHTARG = jsonb)",
    "CREATE OPERATOR trap.& (FUNCTION = trap.band, LEFTARG = integer, RIGHTARG = integer)",
]


def test_the_tables_triggers_cannot_be_redirected_by_a_writers_search_path(owned_outbox):
    """notify_relays(), admit_message() and move_written_row() run with their owner's
    rights for every writer: a writer that puts its own functions and operators before
    pg_catalog must not get them called, for a usual row, one with headers or a delayed
    one."""
    register_listening_relay(owned_outbox)
    with login_role(owned_outbox, "writer") as (role, role_dsn):
        grant_printed(owned_outbox, role, "producer")
        with psycopg.connect(owned_outbox, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE SCHEMA trap AUTHORIZATION {}").format(sql.Identifier(role))
            )
            admin.execute('LISTEN "outbox.messages"')
            with psycopg.connect(role_dsn, autocommit=True) as conn:
                for head in TRAPS:
                    conn.execute(
                        f"{head} LANGUAGE plpgsql AS $$ BEGIN"  # type: ignore[arg-type]
                        " RAISE EXCEPTION 'the trap ran as %', current_user; END $$"
                    )
                for operator in OPERATORS:
                    conn.execute(operator)  # type: ignore[arg-type]
                conn.execute("SET search_path = trap, pg_catalog")
                conn.execute(
                    "INSERT INTO outbox.messages (topic, key, payload) VALUES ('t', 'k', '1')"
                )
                relay.enqueue(conn, topic="t", key="k", payload=2)
                conn.execute(  # the writer's own statements qualify what they call
                    "INSERT INTO outbox.messages (topic, key, payload, headers, available_at)"
                    """ VALUES ('t', NULL, '3', '{"h": "v"}', DEFAULT),"""
                    " ('t', 'k', '4', '{}', pg_catalog.clock_timestamp()"
                    " OPERATOR(pg_catalog.+) '1 minute'::pg_catalog.interval)"
                )
                scheduled = conn.execute("SELECT count(*) FROM outbox.messages").fetchone()
            woken = list(admin.notifies(timeout=5, stop_after=1))
    assert {n.channel for n in woken} == {"outbox.messages"}
    assert scheduled == (3,)  # the delayed one moved aside


ATTACKS = {
    "a range of seq": (
        "INSERT INTO outbox.messages (seq, topic, payload) OVERRIDING SYSTEM VALUE"
        " VALUES (1000, 't', '1')"
    ),
    "an id of its choosing": (
        "INSERT INTO outbox.messages (id, topic, payload) VALUES (gen_random_uuid(), 't', '1')"
    ),
    "a row already sent": (
        "INSERT INTO outbox.messages (topic, payload, sent_at) VALUES ('t', '1', now())"
    ),
    "attempts used up": (
        "INSERT INTO outbox.messages (topic, payload, attempts) VALUES ('t', '1', 99)"
    ),
    "a parked row": (
        "INSERT INTO outbox.messages (topic, payload, parked_at) VALUES ('t', '1', now())"
    ),
    "an error": "INSERT INTO outbox.messages (topic, payload, last_error) VALUES ('t', '1', 'x')",
    "a creation time": (
        "INSERT INTO outbox.messages (topic, payload, created_at) VALUES ('t', '1', 'epoch')"
    ),
}
EVERY_WAY = [
    "INSERT INTO outbox.messages (topic, key, payload, payload_bytes, headers, content_type,"
    """ available_at) VALUES ('t', 'k', NULL, '\\x00', '{"h": "v"}', 'image/png', now())""",
    "SELECT outbox.enqueue('t', 'k', '1')",
    """SELECT outbox.enqueue('t', 'k', '1'::jsonb, '{"h": "v"}', now() + interval '1 hour')""",
    "SELECT outbox.enqueue_binary('t', NULL, '\\x00ff'::bytea, '{}', 'image/png')",
    "SELECT * FROM outbox.enqueue_many(ARRAY['t', 't'], ARRAY['k', 'k'], ARRAY['1', '2'])",
    "SELECT outbox.emit('t', 'k', '1', deliver_at => now() + interval '1 hour')",
    "SELECT outbox.emit('t', 'k', '1')",  # a logical message: no row
]


def attacks_fail(role_dsn: str) -> None:
    for what, statement in ATTACKS.items():
        with (
            psycopg.connect(role_dsn) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
        ):
            conn.execute(statement)  # type: ignore[arg-type]
            pytest.fail(f"a producer could insert {what}")


def every_way_writes(role_dsn: str) -> int:
    """Write with every way there is, as the role; return how many rows that makes."""
    with psycopg.connect(role_dsn) as conn:
        for statement in EVERY_WAY:
            conn.execute(statement)  # type: ignore[arg-type]
        relay.enqueue(conn, topic="t", key="k", payload={"a": 1}, headers={"h": "v"}, delay=60)
        relay.enqueue(conn, topic="t", key="k", payload=b"\x00")
        relay.enqueue_many(conn, [{"topic": "t", "payload": 1}, {"topic": "t", "payload": b"2"}])
    return len(EVERY_WAY) - 1 + 5


def pending_rows(dsn: str) -> list[tuple[int, object, int]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(  # a delayed message waits in the scheduled table
            "SELECT seq, sent_at, attempts FROM outbox.messages"
            " UNION ALL SELECT seq, NULL, 0 FROM outbox.scheduled ORDER BY seq"
        ).fetchall()


def test_a_producer_writes_every_way_but_not_the_relays_bookkeeping(owned_outbox):
    """Issue 27: with INSERT on the whole table a producer could take a range of seq
    (every later enqueue() fails on the primary key until the sequence passes it) or
    insert rows as sent, parked or out of attempts. It may set only its message."""
    with login_role(owned_outbox, "writer") as (role, role_dsn):
        grant_printed(owned_outbox, role, "producer")
        attacks_fail(role_dsn)
        written = every_way_writes(role_dsn)
    rows = pending_rows(owned_outbox)
    assert len(rows) == written
    assert [seq for seq, _, _ in rows] == list(range(1, written + 1))
    assert all(sent is None and attempts == 0 for _, sent, attempts in rows)


def test_the_printed_grants_take_back_what_an_earlier_version_gave(owned_outbox):
    """Until this version the producer script granted INSERT on the whole table: running
    the new one for such a role leaves it only the columns."""
    with login_role(owned_outbox, "writer") as (role, role_dsn):
        with psycopg.connect(owned_outbox, autocommit=True) as admin:
            admin.execute(
                sql.SQL("GRANT INSERT ON outbox.messages TO {}").format(sql.Identifier(role))
            )
        grant_printed(owned_outbox, role, "producer")
        attacks_fail(role_dsn)
        assert every_way_writes(role_dsn) > 0


A_DEAD_LETTER = (
    "SELECT outbox.bury_parked(jsonb_populate_record(NULL::outbox.messages, jsonb_build_object("
    "'seq', 1, 'id', gen_random_uuid(), 'topic', 't', 'payload', 1, 'content_type',"
    " 'application/json', 'headers', '{}'::jsonb, 'created_at', now(), 'attempts', 1,"
    " 'parked_at', now())))"
)


def test_the_triggers_helper_runs_as_its_caller_so_a_producer_cannot_write_dead_letters(db_dsn):
    """bury_parked() is called by the table's triggers, which run as the schema owner.
    PUBLIC may execute functions by default, so a producer can call it too: it must then
    run with the producer's rights, which do not reach the dead letters."""
    result = outbox_relay("migrate", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    with login_role(db_dsn, "writer") as (role, role_dsn):
        grant_printed(db_dsn, role, "producer")
        with (
            psycopg.connect(role_dsn) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="dead_letters"),
        ):
            conn.execute(A_DEAD_LETTER)
    with psycopg.connect(db_dsn) as admin:
        assert admin.execute("SELECT count(*) FROM outbox.dead_letters").fetchone() == (0,)
