"""Migration 10: the table's checks, the bucket and the delayed move live in one BEFORE
trigger (admit_message) instead of CHECKs, a generated column and WHENs, which
PostgreSQL prepares again for every statement. Read back with plain SQL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from relay.migrations import migrate
from tests.support.old_outbox import apply_migrations, old_outbox

pytestmark = pytest.mark.integration
BUCKET_OF_ROW = "(hashtext(COALESCE(key, id::text)) & 255)::smallint"


@pytest.fixture
def outbox(db_dsn: str) -> str:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
    return db_dsn


REFUSED = {
    "an empty topic": (
        ("", "k", "1", None), "messages_topic_check", "1 to 249 characters long; this one has 0"
    ),
    "a topic of 250 characters": (
        ("t" * 250, "k", "1", None), "messages_topic_check", "this one has 250"
    ),
    "two payloads": (
        ("t", "k", "1", b"\x01"), "messages_one_payload", "a JSON payload or a binary one"
    ),
}  # fmt: skip
INSERT = "INSERT INTO outbox.messages (topic, key, payload, payload_bytes) VALUES (%s, %s, %s, %s)"
COPY = "COPY outbox.messages (topic, key, payload, payload_bytes) FROM STDIN"


def refusal(conn: psycopg.Connection[Any], write: Any) -> psycopg.errors.CheckViolation:
    with pytest.raises(psycopg.errors.CheckViolation) as caught, conn.transaction():
        write()
    return caught.value


@pytest.mark.parametrize(("row", "constraint", "sentence"), REFUSED.values(), ids=REFUSED.keys())
def test_what_the_checks_refused_is_refused_by_insert_copy_and_update(
    outbox, row, constraint, sentence
):
    def copy_in() -> None:
        with conn.cursor().copy(COPY) as copy:
            copy.write_row(row)

    with psycopg.connect(outbox, autocommit=True) as conn:
        (seq,) = conn.execute(INSERT + " RETURNING seq", ("t", "k", "1", None)).fetchone()
        errors = [
            refusal(conn, lambda: conn.execute(INSERT, row)),
            refusal(conn, copy_in),
            refusal(conn, lambda: conn.execute(
                "UPDATE outbox.messages SET topic = %s, payload = %s, payload_bytes = %s"
                " WHERE seq = %s", (row[0], row[2], row[3], seq))),
        ]  # fmt: skip
        assert conn.execute("SELECT count(*) FROM outbox.messages").fetchone() == (1,)
    for error in errors:
        assert sentence in str(error)
        assert error.diag.constraint_name == constraint
        assert (error.diag.schema_name, error.diag.table_name) == ("outbox", "messages")


def test_every_row_gets_the_bucket_of_its_key_or_of_its_id_when_keyless(outbox):
    with psycopg.connect(outbox, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload)"
            " SELECT 't', CASE WHEN n % 3 = 0 THEN NULL ELSE 'k' || n END, '1'"
            " FROM generate_series(1, 300) AS n"
        )
        with conn.cursor().copy("COPY outbox.messages (topic, key, payload) FROM STDIN") as copy:
            copy.write_row(("t", "copied", "1"))
        conn.execute("UPDATE outbox.messages SET key = 'moved' WHERE key = 'k1'")
        conn.execute("UPDATE outbox.messages SET key = NULL WHERE key = 'k2'")
        wrong = conn.execute(
            f"SELECT count(*) FROM outbox.messages WHERE bucket <> {BUCKET_OF_ROW}"  # noqa: S608
        ).fetchone()
        spread = conn.execute("SELECT count(DISTINCT bucket) FROM outbox.messages").fetchone()
    assert wrong == (0,)
    assert spread[0] > 100  # keyless rows spread by id, keys by key


def test_a_writer_cannot_choose_a_bucket(outbox):
    with psycopg.connect(outbox, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, bucket) VALUES ('t', 'k', '1', 7)"
        )
        (bucket, expected) = conn.execute(
            f"SELECT bucket, {BUCKET_OF_ROW} FROM outbox.messages"  # noqa: S608
        ).fetchone()
    assert bucket == expected


def test_a_parked_insert_and_a_parking_update_both_become_dead_letters(outbox):
    """The CDC parker inserts a refused message as a parked row, or parks the row in
    place (ON CONFLICT): either way the dead letters have it and messages does not."""
    park = (
        "INSERT INTO outbox.messages AS m (id, topic, key, payload, attempts, last_error,"
        " parked_at) VALUES (%s, 't', 'k', '1', 1, 'refused', now())"
        " ON CONFLICT (id) DO UPDATE SET parked_at = now(), last_error = excluded.last_error"
    )
    with psycopg.connect(outbox, autocommit=True) as conn:
        (kept,) = conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload) VALUES ('t', 'k', '0') RETURNING id"
        ).fetchone()
        conn.execute(park, (kept,))
        conn.execute(park, ("018f0000-0000-7000-8000-000000000001",))
        left = conn.execute("SELECT count(*) FROM outbox.messages").fetchone()
        dead = conn.execute(
            "SELECT id::text, reason, last_error FROM outbox.dead_letters ORDER BY seq"
        ).fetchall()
    assert left == (0,)
    assert dead == [
        (str(kept), "parked", "refused"),
        ("018f0000-0000-7000-8000-000000000001", "parked", "refused"),
    ]


def test_no_statement_of_a_writer_prepares_a_check_a_generated_column_or_a_big_when(outbox):
    """What PostgreSQL prepares again for every statement, and so a single-row INSERT pays
    once per row: CHECK constraints, stored generated columns, the WHEN of row triggers.
    The outbox keeps its checks in admit_message() instead; only one small WHEN is left
    on INSERT (benchmarks/README.md has what each cost)."""
    with psycopg.connect(outbox) as conn:
        checks = conn.execute(
            "SELECT conname FROM pg_constraint"
            " WHERE conrelid = 'outbox.messages'::regclass AND contype = 'c'"
        ).fetchall()
        generated = conn.execute(
            "SELECT attname FROM pg_attribute"
            " WHERE attrelid = 'outbox.messages'::regclass AND attgenerated <> ''"
        ).fetchall()
        whens = conn.execute(
            "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE tgrelid = 'outbox.messages'::regclass AND tgqual IS NOT NULL"
            " AND tgtype & 4 <> 0"  # TRIGGER_TYPE_INSERT
        ).fetchall()
    assert checks == []
    assert generated == []
    assert [name for name, _ in whens] == ["messages_move_inserted"]


def test_upgrading_keeps_the_buckets_and_the_reserved_header_exemption(db_dsn):
    """Rows written before migration 10 keep their bucket; rows before migration 9 keep
    their exemption from the reserved header names, by the seq migration 9 recorded."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old_outbox(conn, through=8)
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, headers)"
            """ SELECT 't', 'k' || n, '1', '{"message_id": "x"}'"""
            " FROM generate_series(1, 5) AS n"
        )
        apply_migrations(conn, after=8, through=9)
        buckets = "SELECT seq, bucket FROM outbox.messages ORDER BY seq"
        old = conn.execute(buckets).fetchall()
        migrate(conn, "outbox", tracks=("outbox",))
        assert conn.execute(buckets).fetchall() == old
        assert conn.execute("SELECT outbox.headers_exempt_through()").fetchone() == (5,)
        conn.execute("UPDATE outbox.messages SET key = key || '!' WHERE seq = 5")
        with pytest.raises(psycopg.errors.CheckViolation, match="'message_id' is reserved"):
            conn.execute(
                """INSERT INTO outbox.messages (topic, payload, headers)"""
                """ VALUES ('t', '1', '{"message_id": "y"}')"""
            )
