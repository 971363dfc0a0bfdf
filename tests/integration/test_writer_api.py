"""The writer's API on real PostgreSQL: what each way of writing puts in the outbox row.

Read back with plain SQL, not through the helpers under test.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import ANY

import psycopg
import pytest

import relay
from relay.migrations import migrate

pytestmark = pytest.mark.integration
BINARY_TYPE = "application/octet-stream"
ANY_TIME = ANY  # a row due now: the test asks that it equal created_at, not what it is


@pytest.fixture
def outbox(db_dsn: str) -> str:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
    return db_dsn


def rows(dsn: str) -> list[tuple[Any, ...]]:
    """Every message written, in seq order: the outbox's rows and the delayed ones that
    wait in the scheduled table (migration 8)."""
    columns = "seq, id, topic, key, payload::text, payload_bytes, headers, content_type"
    with psycopg.connect(dsn) as conn:
        written = conn.execute(
            f"SELECT {columns} FROM outbox.messages"  # noqa: S608 (constant text)
            f" UNION ALL SELECT {columns} FROM outbox.scheduled ORDER BY 1"
        ).fetchall()
    return [row[1:] for row in written]


def test_enqueue_many_writes_the_list_in_order_and_returns_its_ids(outbox):
    messages: list[dict[str, Any]] = [
        {"topic": "orders", "key": "k1", "payload": {"n": 0}},
        {"topic": "orders", "key": "k2", "payload": [1, "two"]},
        {"topic": "images", "key": "k1", "payload": b"\x00\xff", "content_type": "image/png"},
        {"topic": "orders", "key": None, "payload": None, "headers": {"trace": "t-1"}},
        {"topic": "orders", "key": "k1", "payload": "text", "headers": {}},
    ]
    with psycopg.connect(outbox) as conn:
        ids = relay.enqueue_many(conn, messages)
    assert rows(outbox) == [
        (ids[0], "orders", "k1", '{"n":0}', None, {}, "application/json"),
        (ids[1], "orders", "k2", '[1,"two"]', None, {}, "application/json"),
        (ids[2], "images", "k1", None, b"\x00\xff", {}, "image/png"),
        (ids[3], "orders", None, "null", None, {"trace": "t-1"}, "application/json"),
        (ids[4], "orders", "k1", '"text"', None, {}, "application/json"),
    ]
    assert all(i.version == 7 for i in ids)


def test_enqueue_many_of_a_thousand_keeps_each_keys_order(outbox):
    messages = [{"topic": "t", "key": f"k{n % 7}", "payload": {"n": n}} for n in range(1000)]
    with psycopg.connect(outbox) as conn:
        ids = relay.enqueue_many(conn, messages)
        written = conn.execute(
            "SELECT id, (payload::jsonb->>'n')::int FROM outbox.messages ORDER BY seq"
        ).fetchall()
    assert [n for _, n in written] == list(range(1000))
    assert [i for i, _ in written] == ids


def test_enqueue_many_joins_the_callers_transaction(outbox):
    with psycopg.connect(outbox) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            relay.enqueue_many(conn, [{"topic": "t", "payload": 1}])
            raise RuntimeError("the business transaction fails")
        assert relay.enqueue_many(conn, []) == []
    assert rows(outbox) == []


def test_enqueue_many_async_shares_the_sql(outbox):
    async def scenario() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(outbox) as conn:
            return await relay.enqueue_many_async(
                conn, [{"topic": "t", "key": "k", "payload": {"a": 1}}] * 2
            )

    ids = asyncio.run(scenario())
    assert [r[0] for r in rows(outbox)] == ids and len(set(ids)) == 2


@pytest.mark.parametrize(
    "message",
    [{"payload": 1}, {"topic": "t"}, {"topic": "t", "payload": 1, "partition": 3}],
)
def test_enqueue_many_names_what_a_message_lacks_or_has_too_many(outbox, message):
    with psycopg.connect(outbox) as conn, pytest.raises(ValueError, match="message 1 of"):
        relay.enqueue_many(conn, [{"topic": "t", "payload": 0}, message])
    assert rows(outbox) == []


def test_sql_enqueue_many_returns_the_ids_in_the_order_of_its_arrays(outbox):
    with psycopg.connect(outbox) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT * FROM outbox.enqueue_many("
                " ARRAY['a', 'b', 'a'], ARRAY['k', NULL, 'k'],"
                """ ARRAY['{"x": 1}', '2', '"three"'],"""
                """ ARRAY[NULL, '{"h": "v"}', NULL]::jsonb[])"""
            )
        ]
    assert rows(outbox) == [
        (ids[0], "a", "k", '{"x": 1}', None, {}, "application/json"),
        (ids[1], "b", None, "2", None, {"h": "v"}, "application/json"),
        (ids[2], "a", "k", '"three"', None, {}, "application/json"),
    ]


def test_sql_enqueue_many_refuses_arrays_of_different_lengths(outbox):
    with (
        psycopg.connect(outbox) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="arrays of one length"),
    ):
        conn.execute("SELECT outbox.enqueue_many(ARRAY['a', 'b'], ARRAY['k'], ARRAY['1', '2'])")


# --- reserved header names ----------------------------------------------------------------

RESERVED = ["message_id", "Content-Type", "key", "id", "ce_type", "cloudEvents:id"]
SQL_WAYS = {
    "INSERT": (
        "INSERT INTO outbox.messages (topic, key, payload, headers) VALUES ('t', 'k', '1', %s)"
    ),
    "enqueue": "SELECT outbox.enqueue('t', 'k', '1', %s)",
    "enqueue jsonb": "SELECT outbox.enqueue('t', 'k', '1'::jsonb, %s)",
    "enqueue_binary": "SELECT outbox.enqueue_binary('t', 'k', '\\x00'::bytea, %s)",
    "enqueue_many": "SELECT outbox.enqueue_many(ARRAY['t'], ARRAY['k'], ARRAY['1'], ARRAY[%s])",
    "emit": "SELECT outbox.emit('t', 'k', '1', %s)",
}


@pytest.mark.parametrize("way", SQL_WAYS)
@pytest.mark.parametrize("name", RESERVED)
def test_every_sql_way_refuses_a_reserved_header_name_in_one_sentence(outbox, way, name):
    with psycopg.connect(outbox) as conn, pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute(SQL_WAYS[way], (psycopg.types.json.Jsonb({"trace": "t", name: "v"}),))
    assert caught.value.diag.message_primary.startswith(
        f"the header name '{name}' is reserved: the relay sets it itself"
    )
    assert rows(outbox) == []


@pytest.mark.parametrize("way", SQL_WAYS)
def test_headers_that_are_not_reserved_still_pass(outbox, way):
    allowed = {"traceparent": "00-1", "ids": "1", "x-message-id": "m", "cex": "c"}
    with psycopg.connect(outbox) as conn:
        conn.execute(SQL_WAYS[way], (psycopg.types.json.Jsonb(allowed),))
    assert [r[5] for r in rows(outbox)] == ([] if way == "emit" else [allowed])


@pytest.mark.parametrize("name", RESERVED)
def test_the_python_helpers_refuse_a_reserved_header_before_sending(outbox, name):
    with psycopg.connect(outbox) as conn:
        with pytest.raises(ValueError, match=f"the header name '{name}' is reserved"):
            relay.enqueue(conn, topic="t", key="k", payload=1, headers={name: "v"})
        with pytest.raises(ValueError, match=f"the header name '{name}' is reserved"):
            relay.enqueue_many(conn, [{"topic": "t", "payload": 1, "headers": {name: "v"}}])
    assert rows(outbox) == []


def test_headers_must_still_be_a_json_object(outbox):
    with (
        psycopg.connect(outbox) as conn,
        pytest.raises(psycopg.errors.CheckViolation, match="outbox headers must be a JSON object"),
    ):
        conn.execute("SELECT outbox.enqueue('t', 'k', '1', '[1]')")


# --- delayed delivery: what the writer asks for lands in available_at ----------------------

LATER = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
EARLIER = datetime(2001, 1, 1, tzinfo=UTC)


def due_times(dsn: str) -> list[tuple[Any, ...]]:
    """Each row's available_at, and whether it is its transaction's start (now()). A
    delayed message waits in the scheduled table, under the seq of its insert."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT available_at, available_at = created_at FROM ("
            " SELECT seq, available_at, created_at FROM outbox.messages"
            " UNION ALL SELECT seq, available_at, created_at FROM outbox.scheduled"
            ") AS written ORDER BY seq"
        ).fetchall()


DELAYED_SQL = [
    "SELECT outbox.enqueue('t', 'k', '1', deliver_at => %(at)s)",
    "SELECT outbox.enqueue('t', 'k', '1'::jsonb, '{}', %(at)s)",
    "SELECT outbox.enqueue_binary('t', 'k', '\\x00'::bytea, deliver_at => %(at)s)",
    "SELECT outbox.enqueue_binary('t', 'k', '\\x00'::bytea, '{}', 'image/png', %(at)s)",
    "SELECT outbox.enqueue_many(ARRAY['t'], ARRAY['k'], ARRAY['1'],"
    " deliver_at => ARRAY[%(at)s::timestamptz])",
    "SELECT outbox.emit('t', 'k', '1', deliver_at => %(at)s)",
    "SELECT outbox.emit('t', 'k', '1'::jsonb, '{}', %(at)s)",
    "SELECT outbox.emit_binary('t', 'k', '\\x00'::bytea, deliver_at => %(at)s)",
]


@pytest.mark.parametrize("statement", DELAYED_SQL)
def test_sql_deliver_at_becomes_the_rows_available_at(outbox, statement):
    with psycopg.connect(outbox) as conn:
        conn.execute(statement, {"at": LATER})
    assert due_times(outbox) == [(LATER, False)]


@pytest.mark.parametrize("statement", DELAYED_SQL)
def test_sql_deliver_at_in_the_past_or_null_means_now(outbox, statement):
    emitted = "emit" in statement  # due now: a logical message, as before, and no row
    with psycopg.connect(outbox) as conn:
        conn.execute(statement, {"at": EARLIER})
        conn.execute(statement, {"at": None})
    assert due_times(outbox) == ([] if emitted else [(ANY_TIME, True), (ANY_TIME, True)])


def test_python_deliver_at_and_delay(outbox):
    with psycopg.connect(outbox) as conn:
        relay.enqueue(conn, topic="t", key="k", payload=1, deliver_at=LATER)
        relay.enqueue(conn, topic="t", key="k", payload=b"\x01", deliver_at=EARLIER)
        (before,) = conn.execute("SELECT clock_timestamp()").fetchone()
        relay.enqueue(conn, topic="t", key="k", payload=2, delay=timedelta(minutes=5))
        relay.enqueue(conn, topic="t", key="k", payload=3, delay=90.5)
        (after,) = conn.execute("SELECT clock_timestamp()").fetchone()
    due = due_times(outbox)
    assert due[:2] == [(LATER, False), (ANY_TIME, True)]
    assert before + timedelta(minutes=5) <= due[2][0] <= after + timedelta(minutes=5)
    assert before + timedelta(seconds=90.5) <= due[3][0] <= after + timedelta(seconds=90.5)


def test_enqueue_many_deliver_at_and_delay_per_message(outbox):
    with psycopg.connect(outbox) as conn:
        (before,) = conn.execute("SELECT clock_timestamp()").fetchone()
        relay.enqueue_many(
            conn,
            [
                {"topic": "t", "payload": 0},
                {"topic": "t", "payload": 1, "deliver_at": LATER},
                {"topic": "t", "payload": b"2", "delay": 60},
                {"topic": "t", "payload": 3, "deliver_at": EARLIER},
            ],
        )
        (after,) = conn.execute("SELECT clock_timestamp()").fetchone()
    due = due_times(outbox)
    assert [due[0], due[1], due[3]] == [(ANY_TIME, True), (LATER, False), (ANY_TIME, True)]
    assert before + timedelta(seconds=60) <= due[2][0] <= after + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ({"deliver_at": datetime(2031, 1, 1)}, "timezone-aware"),
        ({"deliver_at": "2031-01-01T00:00:00Z"}, "timezone-aware"),
        ({"deliver_at": LATER, "delay": 5}, "not both"),
        ({"delay": float("nan")}, "finite number of seconds"),
        ({"delay": True}, "finite number of seconds"),
        ({"delay": 1e300}, "too long"),
    ],
)
def test_python_refuses_an_unclear_delivery_time(outbox, when, problem):
    with psycopg.connect(outbox) as conn:
        with pytest.raises(ValueError, match=problem):
            relay.enqueue(conn, topic="t", key="k", payload=1, **when)
        with pytest.raises(ValueError, match=problem):
            relay.enqueue_many(conn, [{"topic": "t", "payload": 1, **when}])
    assert rows(outbox) == []


def test_calls_written_for_the_functions_before_deliver_at_still_work(outbox):
    calls = [
        "SELECT outbox.enqueue('t', 'k', '1')",
        """SELECT outbox.enqueue('t', 'k', '1', '{"h": "v"}')""",
        "SELECT outbox.enqueue('t', NULL, to_jsonb(1))",
        "SELECT outbox.enqueue(topic => 't', key => 'k', payload => '1', headers => NULL)",
        "SELECT outbox.enqueue_binary('t', 'k', '\\x00')",
        "SELECT outbox.enqueue_binary('t', 'k', '\\x00', '{}', 'image/png')",
        "SELECT outbox.emit('t', 'k', '1')",
        "SELECT outbox.emit('t', 'k', to_jsonb(1), '{}')",
        "SELECT outbox.emit_binary('t', 'k', '\\x00', '{}', 'image/png')",
    ]
    with psycopg.connect(outbox) as conn:
        for call in calls:
            conn.execute(call)  # type: ignore[arg-type]
    assert len(rows(outbox)) == 6


def test_enqueue_many_of_one_message_writes_the_same_row(outbox):
    """One message goes by the single-row statement; the row must not tell."""
    message = {"topic": "t", "key": "k", "payload": b"\x01", "headers": {"h": "v"}}
    with psycopg.connect(outbox) as conn:
        (first,) = relay.enqueue_many(conn, [{**message, "deliver_at": LATER}])
        (second, _) = relay.enqueue_many(conn, [{**message, "deliver_at": LATER}, message])
    written = [r[1:] for r in rows(outbox)]
    assert written[0] == written[1] == ("t", "k", None, b"\x01", {"h": "v"}, BINARY_TYPE)
    assert [r[0] for r in rows(outbox)][:2] == [first, second]
    assert [d for d, _ in due_times(outbox)][:2] == [LATER, LATER]


ONE_MESSAGE_CASES = {
    "json, headers, content_type, deliver_at": (
        {"key": "k", "payload": {"a": [1, "é"]}, "headers": {"h": "v"},
         "content_type": "application/json", "deliver_at": LATER},
        ('{"a":[1,"é"]}', None, {"h": "v"}, "application/json", LATER),
    ),
    "bytes, headers, content_type, delay": (
        {"key": None, "payload": bytearray(b"\x00\xff"), "headers": {"h": "v"},
         "content_type": "image/png", "delay": 300},
        (None, b"\x00\xff", {"h": "v"}, "image/png", timedelta(seconds=300)),
    ),
    "bytes without content_type, a time already past": (
        {"key": "k", "payload": b"\x01", "deliver_at": EARLIER},
        (None, b"\x01", {}, BINARY_TYPE, timedelta(0)),
    ),
    "json alone": (
        {"key": "k", "payload": 7},
        ("7", None, {}, "application/json", timedelta(0)),
    ),
}  # fmt: skip


# due: a delay counted from the transaction's start, NULL for a time a day or more away
AS_THE_RELAY_READS_THEM = """
SELECT seq, topic, key, payload::text, payload_bytes, headers, content_type, bucket,
       CASE WHEN available_at - created_at < '1 day' THEN available_at - created_at END AS due,
       available_at, attempts, last_error
FROM outbox.messages WHERE sent_at IS NULL
UNION ALL
SELECT seq, topic, key, payload::text, payload_bytes, headers, content_type, NULL,
       CASE WHEN available_at - created_at < '1 day' THEN available_at - created_at END,
       available_at, 0, NULL
FROM outbox.scheduled ORDER BY 1"""


def as_the_relay_reads_them(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Each topic's messages in seq order: every column the relay reads, and when each
    is due (a delay counted from its transaction's start, or NULL and the time). The
    ones due later wait in the scheduled table, which has no bucket nor attempts yet."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(AS_THE_RELAY_READS_THEM).fetchall()  # type: ignore[arg-type]
    topics: dict[str, list[tuple[Any, ...]]] = {}
    for row in found:
        topics.setdefault(row[1], []).append(row[2:])
    return topics


def ids_in_seq_order(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT id FROM (SELECT seq, id FROM outbox.messages WHERE sent_at IS NULL"
                " UNION ALL SELECT seq, id FROM outbox.scheduled) AS m ORDER BY seq"
            ).fetchall()
        ]


@pytest.mark.parametrize(
    ("message", "expected"), ONE_MESSAGE_CASES.values(), ids=ONE_MESSAGE_CASES.keys()
)
def test_enqueue_many_of_one_message_honours_every_field(outbox, message, expected):
    """A list of one takes the single-row statement (sync and async), a list of two the
    arrays: the rows the relay finds must not tell which."""

    async def async_one() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(outbox) as conn:
            return await relay.enqueue_many_async(conn, [{**message, "topic": "async"}])

    with psycopg.connect(outbox) as conn:
        one = relay.enqueue_many(conn, [{**message, "topic": "one"}])
        two = relay.enqueue_many(conn, [{**message, "topic": "two"}] * 2)
    ids = {"one": one, "async": asyncio.run(async_one()), "two": two}
    found = as_the_relay_reads_them(outbox)
    assert {topic: len(rows) for topic, rows in found.items()} == {"one": 1, "async": 1, "two": 2}
    for row in (row for rows in found.values() for row in rows):
        *columns, bucket, delay, available_at, attempts, last_error = row
        assert tuple(columns) == (message["key"], *expected[:-1])
        assert (attempts, last_error) == (0, None)
        assert bucket == found["two"][0][-5]
        due = expected[-1]
        if isinstance(due, datetime):
            assert (available_at, delay) == (due, None)
        else:
            assert due <= delay < due + timedelta(seconds=30)
    assert ids_in_seq_order(outbox) == [*ids["one"], *ids["two"], *ids["async"]]
