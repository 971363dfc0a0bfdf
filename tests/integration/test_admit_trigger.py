"""Migrations 10 and 11: the table's checks, the bucket and the delayed move live in one
BEFORE trigger (admit_message) instead of CHECKs, a generated column and WHENs, which
PostgreSQL prepares again for every statement; a delayed message's stand-in leaves in the
statement trigger, a parked insert goes to the dead letters before it. Read back with
plain SQL."""

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


def test_no_statement_of_a_writer_prepares_a_check_a_generated_column_or_a_when(outbox):
    """What PostgreSQL prepares again for every statement, and so a single-row INSERT pays
    once per row: CHECK constraints, stored generated columns, the WHEN of row triggers.
    The outbox keeps its checks in admit_message() instead, and has no row trigger after
    an insert (benchmarks/README.md has what each cost)."""
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
        after_each_row = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'outbox.messages'::regclass"
            " AND tgtype & 7 = 5"  # TRIGGER_TYPE_ROW | TRIGGER_TYPE_INSERT, not BEFORE
        ).fetchall()
    assert checks == []
    assert generated == []
    assert whens == []
    assert after_each_row == []


LEFT_BEHIND = "SELECT count(*) FROM outbox.messages WHERE sent_at IS NOT NULL"
WAITING = "SELECT count(*) FROM outbox.scheduled"


def test_each_way_of_writing_a_delayed_message_leaves_no_stand_in_after_its_statement(outbox):
    """The stand-in lives until the end of its statement: RETURNING still gives its id,
    and no later statement of the same transaction (nor anyone after) sees it."""
    later = "now() + interval '1 hour'"
    with psycopg.connect(outbox) as conn:
        (returned,) = conn.execute(
            f"INSERT INTO outbox.messages (topic, key, payload, available_at)"  # noqa: S608
            f" VALUES ('t', 'k', '1', {later}) RETURNING id"
        ).fetchone()
        assert conn.execute(LEFT_BEHIND).fetchone() == (0,)
        conn.execute(
            f"INSERT INTO outbox.messages (topic, key, payload, available_at)"  # noqa: S608
            f" SELECT 't', 'k' || n, '1', CASE WHEN n % 2 = 0 THEN {later} ELSE now() END"
            " FROM generate_series(1, 10) AS n"
        )
        assert conn.execute(LEFT_BEHIND).fetchone() == (0,)
        with conn.cursor().copy(
            "COPY outbox.messages (topic, key, payload, available_at) FROM STDIN"
        ) as copy:
            copy.write_row(("t", "copied", "1", "2999-01-01T00:00:00Z"))
        assert conn.execute(LEFT_BEHIND).fetchone() == (0,)
        conn.execute(
            f"SELECT outbox.enqueue_many(ARRAY['t', 't'], ARRAY['a', 'b'], ARRAY['1', '2'],"
            f" NULL, ARRAY[{later}, NULL])"
        )
        assert conn.execute(LEFT_BEHIND).fetchone() == (0,)
        conn.commit()
        kept = conn.execute("SELECT count(*) FROM outbox.messages").fetchone()
        scheduled = conn.execute("SELECT id FROM outbox.scheduled ORDER BY seq").fetchall()
    assert kept == (5 + 1,)
    assert len(scheduled) == 1 + 5 + 1 + 1
    assert scheduled[0] == (returned,)


def test_rows_marked_sent_by_others_or_inserted_sent_are_not_taken_for_stand_ins(outbox):
    """Only a row inserted sent and delayed, with its copy waiting, is a stand-in."""
    with psycopg.connect(outbox) as conn:
        conn.execute("INSERT INTO outbox.messages (topic, key, payload) VALUES ('t', 'k', '1')")
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, sent_at, available_at)"
            " VALUES ('t', 'k', '2', now(), now() + interval '1 hour')"
        )
        conn.execute("UPDATE outbox.messages SET sent_at = now() WHERE payload::text = '1'")
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at)"
            " VALUES ('t', 'k', '3', now() + interval '1 hour')"
        )
        conn.commit()
        left = conn.execute(
            "SELECT payload::text FROM outbox.messages ORDER BY seq"
        ).fetchall()
        waiting = conn.execute(WAITING).fetchone()
    assert left == [("1",), ("2",)]
    assert waiting == (1,)


def test_two_outboxes_written_in_one_statement_each_remove_their_own_stand_ins(outbox):
    """A trigger of the application's that writes a second outbox runs a statement of its
    own inside the first's: the second's statement end must not take the first's
    stand-ins for its own, nor leave them behind."""
    with psycopg.connect(outbox, autocommit=True) as conn:
        migrate(conn, "other")
        conn.execute(
            "CREATE FUNCTION public.mirror() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO other.messages (topic, key, payload)"
            " VALUES (NEW.topic, NEW.key, NEW.payload); RETURN NEW; END $$"
        )
        # Named to run after messages_admit, which raises the first outbox's flag.
        conn.execute(
            "CREATE TRIGGER messages_zz_mirror BEFORE INSERT ON outbox.messages"
            " FOR EACH ROW EXECUTE FUNCTION public.mirror()"
        )
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at)"
            " VALUES ('t', 'k', '1', now() + interval '1 hour')"
        )
        left = conn.execute(LEFT_BEHIND).fetchone()
        waiting = conn.execute(WAITING).fetchone()
        mirrored = conn.execute("SELECT count(*) FROM other.messages").fetchone()
    assert (left, waiting, mirrored) == ((0,), (1,), (1,))


def test_a_parked_insert_counts_no_row_and_an_aborted_one_leaves_no_dead_letter(outbox):
    park = (
        "INSERT INTO outbox.messages (id, topic, key, payload, attempts, last_error,"
        " parked_at) VALUES (%s, 't', 'k', '1', 1, 'refused', now())"
    )
    with psycopg.connect(outbox) as conn:
        inserted = conn.execute(park, ("018f0000-0000-7000-8000-000000000002",)).rowcount
        conn.rollback()
        after_rollback = conn.execute("SELECT count(*) FROM outbox.dead_letters").fetchone()
    assert inserted == 0
    assert after_rollback == (0,)


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


# Rows on each side of migration 12's test for the usual message, each written in a
# transaction that is rolled back. An INSERT writes the id NEW_ID (explicit, so a keyless
# row's bucket is the same in both runs); an UPDATE changes the row EXISTING_ID.
ROW = "INSERT INTO outbox.messages (id, topic, key, payload, payload_bytes{}) VALUES ({})"
EDGES = {
    "usual": ROW.format("", "%s, 't', 'k', '1', NULL"),
    "keyless": ROW.format("", "%s, 't', NULL, '1', NULL"),
    "binary": ROW.format("", "%s, 't', 'k', NULL, '\\x01'"),
    "no payload": ROW.format("", "%s, 't', 'k', NULL, NULL"),
    "two payloads": ROW.format("", "%s, 't', 'k', '1', '\\x01'"),
    "empty topic": ROW.format("", "%s, '', 'k', '1', NULL"),
    "topic of 249": ROW.format("", "%s, repeat('t', 249), 'k', '1', NULL"),
    "topic of 250": ROW.format("", "%s, repeat('t', 250), 'k', '1', NULL"),
    "no topic": ROW.format("", "%s, NULL, 'k', '1', NULL"),
    "headers": ROW.format(", headers", """%s, 't', 'k', '1', NULL, '{"a": "b"}'"""),
    "reserved header": ROW.format(
        ", headers", """%s, 't', 'k', '1', NULL, '{"message_id": "x"}'"""
    ),
    "headers NULL": ROW.format(", headers", "%s, 't', 'k', '1', NULL, NULL"),
    "delayed": ROW.format(", available_at", "%s, 't', 'k', '1', NULL, now() + '1h'"),
    "due in the past": ROW.format(", available_at", "%s, 't', 'k', '1', NULL, now() - '1h'"),
    "due NULL": ROW.format(", available_at", "%s, 't', 'k', '1', NULL, NULL"),
    "inserted sent": ROW.format(", sent_at", "%s, 't', 'k', '1', NULL, now()"),
    "inserted parked": ROW.format(
        ", parked_at, last_error", "%s, 't', 'k', '1', NULL, now(), 'no'"
    ),
    "key updated": "UPDATE outbox.messages SET key = 'other' WHERE id = %s",
    "topic emptied": "UPDATE outbox.messages SET topic = '' WHERE id = %s",
    "reserved header set":
        """UPDATE outbox.messages SET headers = '{"message_id": "x"}' WHERE id = %s""",
}  # fmt: skip
NEW_ID = "018f0000-0000-7000-8000-0000000000aa"
EXISTING_ID = "018f0000-0000-7000-8000-0000000000bb"
OUTCOME = (
    "SELECT (SELECT array_agg(ROW(topic, key, payload::text, payload_bytes, headers,"
    " bucket, available_at > created_at, sent_at IS NOT NULL, parked_at IS NOT NULL)::text"
    " ORDER BY seq) FROM outbox.messages),"
    " (SELECT count(*) FROM outbox.scheduled), (SELECT count(*) FROM outbox.dead_letters)"
)


def _outcomes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What each edge row leads to: the table's rows, or the error's code, constraint and
    message."""
    found: dict[str, Any] = {}
    for name, statement in EDGES.items():
        params = (EXISTING_ID,) if statement.startswith("UPDATE") else (NEW_ID,)
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(statement, params)
                found[name] = conn.execute(OUTCOME).fetchone()
        except psycopg.Error as error:
            diag = error.diag
            found[name] = (diag.sqlstate, diag.constraint_name, diag.message_primary)
    return found


def test_migration_12_changes_the_outcome_of_no_row(db_dsn):
    """The usual message takes one test in admit_message() since migration 12; every row
    on either side of that test (each of its conditions, NULLs included) is admitted,
    refused or moved as migration 11 did."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old_outbox(conn, through=11)
        conn.execute(
            "INSERT INTO outbox.messages (id, topic, key, payload) VALUES (%s, 't', 'k', '1')",
            (EXISTING_ID,),
        )
        before = _outcomes(conn)
        apply_migrations(conn, after=11)
        after = _outcomes(conn)
    assert len({str(outcome) for outcome in before.values()}) > 10  # the edges differ
    assert after == before
