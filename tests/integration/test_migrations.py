"""The migrations are the schema: applying them, printing them for another tool, and
upgrading step by step must all give the same catalog."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay import enqueue_async
from relay.migrations import migrate, render_script
from relay.producer import enqueue
from tests.support.old_outbox import apply_migrations, old_outbox, start_old_outbox
from tests.support.services import create_database, drop_database, find_pg_bindir

pytestmark = pytest.mark.integration


def schema_dump(dsn: str, schema: str) -> str:
    """pg_dump --schema-only of one schema, without comments and blank lines."""
    result = subprocess.run(
        [
            str(find_pg_bindir() / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            f"--schema={schema}",
            "--dbname",
            dsn,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [
        line
        for line in result.stdout.splitlines()
        if line.strip()
        and not line.startswith("--")
        and not line.startswith("\\restrict")
        and not line.startswith("\\unrestrict")
    ]
    return "\n".join(lines)


@pytest.fixture
def other_dsn(pg_dsn):
    """A second fresh database on the same server."""
    name = f"m_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_dsn, name)
    yield dsn
    drop_database(pg_dsn, name)


def test_printed_sql_builds_the_same_schema_as_migrate(db_dsn, other_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
    with psycopg.connect(other_dsn, autocommit=True) as conn:
        conn.execute(render_script("outbox"))
        assert migrate(conn, "outbox") == []  # the printed script records its versions
    applied = schema_dump(db_dsn, "outbox")
    assert "CREATE TABLE outbox.messages" in applied
    assert applied == schema_dump(other_dsn, "outbox")


def test_upgrading_one_migration_at_a_time_matches_a_fresh_install(db_dsn, other_dsn):
    """Apply each outbox migration on its own, as successive releases would."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox", tracks=("outbox",))
    with psycopg.connect(other_dsn, autocommit=True) as conn:
        start_old_outbox(conn)
        apply_migrations(conn)
    assert schema_dump(db_dsn, "outbox") == schema_dump(other_dsn, "outbox")


def test_a_custom_schema_name_is_used_everywhere(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "billing_outbox")
        message_id = enqueue(conn, topic="t", key="k", payload=[1, 2], schema="billing_outbox")
        row = conn.execute(
            "SELECT topic, payload FROM billing_outbox.messages WHERE id = %s", (message_id,)
        ).fetchone()
        assert row == ("t", [1, 2])
        assert conn.execute("SELECT to_regclass('outbox.messages')").fetchone()[0] is None


def test_enqueue_async_joins_the_callers_transaction(db_dsn):
    import asyncio

    async def scenario() -> tuple[Any, int]:
        async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
            async with conn.transaction():
                kept = await enqueue_async(conn, topic="t", key=None, payload={"a": 1})
            try:
                async with conn.transaction():
                    await enqueue_async(conn, topic="t", key=None, payload=b"\x00")
                    raise RuntimeError("the business transaction fails")
            except RuntimeError:
                pass
            cursor = await conn.execute("SELECT count(*) FROM outbox.messages")
            return kept, (await cursor.fetchone())[0]

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
    kept, count = asyncio.run(scenario())
    assert count == 1  # the rolled-back event is gone with its transaction
    assert kept.version == 7


def test_json_payloads_are_kept_as_written_and_jsonb_callers_still_work(db_dsn):
    """Migration 6: the text overload stores the JSON as written (and still rejects what
    is not JSON); a jsonb value still calls the jsonb version."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
        written = '{"b": 1,  "a": [1,2], "b": 2}'  # spacing, key order, a duplicate key
        conn.execute("SELECT outbox.enqueue('t', 'k', %s)", (written,))
        conn.execute("SELECT outbox.enqueue('t', 'k', to_jsonb(%s::text))", ("x",))
        conn.execute("SELECT outbox.emit('t', 'k', %s)", (written,))
        texts = conn.execute("SELECT payload::text FROM outbox.messages ORDER BY seq").fetchall()
        assert texts == [(written,), ('"x"',)]
        for bad in ("{not json", "{'a': 1}"):
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                conn.execute("SELECT outbox.enqueue('t', 'k', %s)", (bad,))
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                conn.execute("SELECT outbox.emit('t', 'k', %s)", (bad,))


def test_upgrading_to_json_payloads_keeps_pending_rows_and_dead_letters(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old_outbox(conn, through=5)
        for n in range(2):
            conn.execute("SELECT outbox.enqueue('t', 'k', %s::jsonb)", (f'{{"n":{n}}}',))
        conn.execute("UPDATE outbox.messages SET parked_at = now() WHERE payload->>'n' = '1'")
        applied = [m.version for m in migrate(conn, "outbox", tracks=("outbox",))]
        assert applied[0] == 6 and all(v > 6 for v in applied[1:])
        pending = conn.execute("SELECT payload::text FROM outbox.messages").fetchall()
        parked = conn.execute("SELECT payload::text FROM outbox.dead_letters").fetchall()
    assert (pending, parked) == ([('{"n": 0}',)], [('{"n": 1}',)])


def test_rows_written_before_the_reserved_header_rule_still_flow(db_dsn):
    """Migration 9 reserves header names for new rows only: a row already written with
    one is still marked sent, fails and is retried, and comes back from the dead letters
    (PostgreSQL checks a constraint again on every UPDATE, so this is not a given)."""
    from relay.deadletters import retry_dead_letters
    from relay.sqlfiles import query

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old_outbox(conn, through=8)
        for n, header in enumerate(["message_id", "key", "content_type"]):
            conn.execute(
                "SELECT outbox.enqueue('t', 'k', %s, %s::jsonb)", (str(n), f'{{"{header}": "x"}}')
            )
        conn.execute("UPDATE outbox.messages SET parked_at = now() WHERE seq = 3")  # dead
        migrate(conn, "outbox", tracks=("outbox",))
        failures = {"seqs": [1], "errors": ["broker said no"], "delays": [1.0]}
        conn.execute(query("record_failures", "outbox"), failures)
        conn.execute(query("mark_sent", "outbox"), {"seqs": "{1,2}"})
        assert retry_dead_letters(conn, "outbox", [3]) == 1
        sent = conn.execute(
            "SELECT seq FROM outbox.messages WHERE sent_at IS NOT NULL ORDER BY seq"
        ).fetchall()
        assert sent == [(1,), (2,)]
        with pytest.raises(psycopg.errors.CheckViolation, match="'message_id' is reserved"):
            conn.execute("""SELECT outbox.enqueue('t', 'k', '4', '{"message_id": "x"}')""")


def test_the_functions_that_gained_deliver_at_keep_their_privileges(db_dsn):
    """Migration 9 replaces enqueue() and emit() by versions with one more parameter: a
    database that took EXECUTE from PUBLIC and gave it to its writers keeps exactly that."""
    writer, other = (f"m7_{name}_{uuid.uuid4().hex[:6]}" for name in ("writer", "other"))
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old_outbox(conn, through=8)
        for role in (writer, other):
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        try:
            conn.execute(
                "REVOKE EXECUTE ON FUNCTION outbox.enqueue(text, text, text, jsonb) FROM PUBLIC"
            )
            conn.execute(
                sql.SQL(
                    "GRANT EXECUTE ON FUNCTION outbox.enqueue(text, text, text, jsonb) TO {}"
                ).format(sql.Identifier(writer))
            )
            migrate(conn, "outbox", tracks=("outbox",))
            may = conn.execute(
                "SELECT has_function_privilege(%s, f, 'EXECUTE'),"
                " has_function_privilege(%s, f, 'EXECUTE'),"
                " has_function_privilege(%s, g, 'EXECUTE')"
                " FROM (SELECT 'outbox.enqueue(text, text, text, jsonb, timestamptz)'::regprocedure"
                " AS f, 'outbox.emit(text, text, text, jsonb, timestamptz)'::regprocedure AS g) x",
                (writer, other, other),
            ).fetchone()
            left = conn.execute(
                "SELECT count(*) FROM pg_proc WHERE pronamespace = 'outbox'::regnamespace"
                " AND proname IN ('enqueue', 'enqueue_binary', 'emit', 'emit_binary')"
            ).fetchone()
        finally:
            for role in (writer, other):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert may == (True, False, True)  # emit() was PUBLIC's before and still is
    assert left == (6,)  # the six with deliver_at; none of the old ones
