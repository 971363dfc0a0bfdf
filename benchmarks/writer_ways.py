"""The ways an application can write its events, for the writer workload.

Each way writes a list of events inside the caller's open transaction, as an application
would: the baselines (a plain table with only a primary key, a tutorial outbox table) and
every way into the outbox. Every way starts from the same Python dicts and serializes them
itself (orjson), so the JSON encoding costs each the same.

``style`` says how the rows travel: ``awaited`` sends one statement per row and waits for
its answer before the next (what application code calling ``execute`` in a loop does;
psycopg prepares a statement it sees often, ``unprepared`` is the same without that);
``pipelined`` sends the same statements without waiting (psycopg's ``executemany``), which
leaves only the server's own cost per statement; ``bulk`` is one call for the whole list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

import relay

Event = tuple[str, str, dict[str, Any]]  # topic, key, payload
WriteFn = Callable[[psycopg.Connection[Any], Sequence[Event]], None]

BASELINE_SCHEMA = "writer_bench"
# The same columns as outbox.messages, with only a primary key: no other index, no check,
# no default beyond the key, no trigger. The yardstick of every ratio.
BASELINE_TABLES = f"""
CREATE SCHEMA {BASELINE_SCHEMA};
CREATE TABLE {BASELINE_SCHEMA}.plain (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id uuid, topic text, key text,
  payload json, payload_bytes bytea, content_type text, headers jsonb,
  created_at timestamptz, available_at timestamptz, attempts integer, last_error text,
  sent_at timestamptz, parked_at timestamptz, bucket smallint
);
-- What a tutorial's outbox looks like: bigserial, jsonb, one index for the relay.
CREATE TABLE {BASELINE_SCHEMA}.tutorial (
  id bigserial PRIMARY KEY, topic text NOT NULL, key text, payload jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz
);
CREATE INDEX tutorial_pending ON {BASELINE_SCHEMA}.tutorial (id) WHERE sent_at IS NULL;
-- The ceiling of a row-by-row INSERT into any outbox that keeps this one's promises: its
-- columns, id default and four indexes (what the relay's claim, acknowledgement, retry
-- and retention look rows up by), its checks (a clear error on bad input, the reserved
-- headers) in their cheapest form known, a BEFORE trigger that PostgreSQL need not
-- prepare per statement as it does a CHECK (migration 10), and its wake-up trigger; and
-- nothing else. Not the bucket, the delayed move nor the dead-letter trigger: the claim
-- could hash the key itself, and the relay could move delayed and parked rows itself.
-- What the outbox costs beyond this could still be taken away.
CREATE TABLE {BASELINE_SCHEMA}.promises (
  LIKE outbox.messages INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES
);
ALTER TABLE {BASELINE_SCHEMA}.promises DROP COLUMN bucket;
CREATE FUNCTION {BASELINE_SCHEMA}.check_promises() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.topic = '' OR length(NEW.topic) > 249 THEN
    RAISE EXCEPTION 'bad topic' USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.payload IS NOT NULL AND NEW.payload_bytes IS NOT NULL THEN
    RAISE EXCEPTION 'two payloads' USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.headers <> '{{}}'::jsonb AND NEW.parked_at IS NULL THEN
    PERFORM outbox.valid_headers(NEW.headers);
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER promises_checks BEFORE INSERT ON {BASELINE_SCHEMA}.promises
  FOR EACH ROW EXECUTE FUNCTION {BASELINE_SCHEMA}.check_promises();
CREATE TRIGGER promises_notify_relays AFTER INSERT ON {BASELINE_SCHEMA}.promises
  FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_relays();
-- The ceiling of any function a writer calls once per row: the ceiling table's INSERT
-- in the cheapest function that returns the new id, as enqueue() does (plpgsql keeps the
-- INSERT's plan for the session; a LANGUAGE sql one plans it on every call). What a
-- SELECT of a function costs beyond the INSERT in it, this pays too.
CREATE FUNCTION {BASELINE_SCHEMA}.enqueue(topic text, key text, payload text) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO {BASELINE_SCHEMA}.promises (topic, key, payload)
  VALUES (enqueue.topic, enqueue.key, enqueue.payload::json) RETURNING id INTO new_id;
  RETURN new_id;
END
$$
"""  # noqa: S608 (the schema is this module's constant)
PLAIN_INSERT = "INSERT INTO writer_bench.plain (topic, key, payload) VALUES (%s, %s, %s::json)"
TUTORIAL_INSERT = (
    "INSERT INTO writer_bench.tutorial (topic, key, payload) VALUES (%s, %s, %s::jsonb)"
)
OUTBOX_INSERT = "INSERT INTO outbox.messages (topic, key, payload) VALUES (%s, %s, %s::json)"
CEILING_INSERT = "INSERT INTO writer_bench.promises (topic, key, payload) VALUES (%s, %s, %s::json)"
CEILING_RETURNING = CEILING_INSERT + " RETURNING id"
SQL_ENQUEUE = "SELECT outbox.enqueue(%s, %s, %s::text)"
CEILING_ENQUEUE = "SELECT writer_bench.enqueue(%s, %s, %s)"
SQL_ENQUEUE_MANY = "SELECT outbox.enqueue_many(%b::text[], %b::text[], %b::text[])"
PLAIN_BULK = (
    "INSERT INTO writer_bench.plain (topic, key, payload)"
    " SELECT t, k, p::json FROM unnest(%b::text[], %b::text[], %b::text[]) AS r(t, k, p)"
)


def _params(events: Sequence[Event]) -> list[tuple[str, str, str]]:
    return [(topic, key, orjson.dumps(payload).decode()) for topic, key, payload in events]


def awaited(statement: str) -> WriteFn:
    def write(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        for topic, key, payload in events:
            conn.execute(statement, (topic, key, orjson.dumps(payload).decode()))

    return write


def awaited_id(statement: str) -> WriteFn:
    """Awaited, each row's new id read back as a UUID: what any API that returns the id
    of the event it wrote costs beyond the INSERT (relay.enqueue() does this)."""

    def write(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        for topic, key, payload in events:
            conn.execute(statement, (topic, key, orjson.dumps(payload).decode())).fetchone()

    return write


def unprepared(statement: str) -> WriteFn:
    """Awaited, and parsed and planned by the server every time, as by a driver that
    does not prepare statements (psycopg2, many ORMs)."""

    def write(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        for topic, key, payload in events:
            conn.execute(statement, (topic, key, orjson.dumps(payload).decode()), prepare=False)

    return write


def pipelined(statement: str) -> WriteFn:
    def write(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(statement, _params(events))

    return write


def bulk(statement: str) -> WriteFn:
    """One statement for the whole list, the columns as three arrays."""

    def write(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        columns = list(zip(*_params(events), strict=True))
        conn.execute(statement, [list(c) for c in columns])

    return write


def python_enqueue(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
    for topic, key, payload in events:
        relay.enqueue(conn, topic=topic, key=key, payload=payload)


def python_enqueue_many(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
    relay.enqueue_many(conn, [{"topic": t, "key": k, "payload": p} for t, k, p in events])


@dataclass(frozen=True)
class Way:
    name: str
    style: str  # awaited, pipelined or bulk
    write: WriteFn
    baseline: bool = False  # a yardstick, not a way into the outbox


def ways() -> list[Way]:
    """Every way this tree offers, baselines first."""
    return [
        Way("plain INSERT", "awaited", awaited(PLAIN_INSERT), baseline=True),
        Way("plain INSERT", "pipelined", pipelined(PLAIN_INSERT), baseline=True),
        Way("plain INSERT", "unprepared", unprepared(PLAIN_INSERT), baseline=True),
        Way("plain INSERT ... unnest", "bulk", bulk(PLAIN_BULK), baseline=True),
        Way("tutorial outbox INSERT", "awaited", awaited(TUTORIAL_INSERT), baseline=True),
        Way("tutorial outbox INSERT", "pipelined", pipelined(TUTORIAL_INSERT), baseline=True),
        Way("ceiling: every promise, no more", "awaited", awaited(CEILING_INSERT), baseline=True),
        Way("ceiling: every promise, no more", "pipelined", pipelined(CEILING_INSERT), True),
        Way("ceiling: every promise, no more", "unprepared", unprepared(CEILING_INSERT), True),
        Way("ceiling: every promise, returning the id", "awaited",
            awaited_id(CEILING_RETURNING), True),
        Way("ceiling: every promise, in a function", "awaited", awaited(CEILING_ENQUEUE), True),
        Way("ceiling: every promise, in a function", "pipelined", pipelined(CEILING_ENQUEUE), True),
        Way("INSERT INTO outbox.messages", "awaited", awaited(OUTBOX_INSERT)),
        Way("INSERT INTO outbox.messages", "pipelined", pipelined(OUTBOX_INSERT)),
        Way("INSERT INTO outbox.messages", "unprepared", unprepared(OUTBOX_INSERT)),
        Way("SELECT outbox.enqueue()", "awaited", awaited(SQL_ENQUEUE)),
        Way("SELECT outbox.enqueue()", "pipelined", pipelined(SQL_ENQUEUE)),
        Way("relay.enqueue()", "awaited", python_enqueue),
        Way("relay.enqueue_many()", "bulk", python_enqueue_many),
        Way("SELECT outbox.enqueue_many()", "bulk", bulk(SQL_ENQUEUE_MANY)),
    ]
