"""A test-side record of every outbox row ever written.

With the default ``--retention 0`` the relay deletes a row once the broker confirmed it,
so a test cannot read from the outbox what was written. ``record_writes`` adds a trigger
that copies each new row's id, topic, key and seq into ``public.test_written``; tests
judge loss and per-key order against that log, and count as sent whatever left the
outbox without becoming a dead letter.
"""

from __future__ import annotations

from typing import Any

import psycopg

_LOG = """
CREATE TABLE IF NOT EXISTS public.test_written (
  id uuid PRIMARY KEY, topic text NOT NULL, key text, seq bigint NOT NULL
);
CREATE OR REPLACE FUNCTION public.test_log_written() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.test_written VALUES (NEW.id, NEW.topic, NEW.key, NEW.seq)
  ON CONFLICT (id) DO NOTHING;  -- a dead letter put back is the same message
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS test_log_written ON outbox.messages;
CREATE TRIGGER test_log_written AFTER INSERT ON outbox.messages
FOR EACH ROW EXECUTE FUNCTION public.test_log_written();
"""

_COUNTS = """
SELECT (SELECT count(*) FROM public.test_written WHERE topic = %(topic)s OR %(all)s),
       (SELECT count(*) FROM outbox.messages
        WHERE sent_at IS NULL AND (topic = %(topic)s OR %(all)s)),
       (SELECT count(*) FROM outbox.dead_letters WHERE topic = %(topic)s OR %(all)s)
"""


def record_writes(dsn: str) -> None:
    """Start logging every row inserted into ``outbox.messages`` (after migrating)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_LOG)


def sent_and_pending(dsn: str, topic: str | None = None, **connect: Any) -> tuple[int, int]:
    """(sent, pending): sent is every logged row no longer pending nor a dead letter,
    whether the relay deleted it or marked it sent."""
    with psycopg.connect(dsn, **connect) as conn:
        row = conn.execute(_COUNTS, {"topic": topic, "all": topic is None}).fetchone()
    assert row is not None
    written, pending, dead = (int(value) for value in row)
    return written - pending - dead, pending


def written_rows(dsn: str, topic: str | None = None) -> list[tuple[str, str | None, int]]:
    """(id, key, seq) of every row ever written (to ``topic``), in seq order."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id::text, key, seq FROM public.test_written "
            "WHERE topic = %(topic)s OR %(all)s ORDER BY seq",
            {"topic": topic, "all": topic is None},
        ).fetchall()


def gone_ids(dsn: str) -> set[str]:
    """Ids of logged rows that left the outbox (deleted on acknowledgement) or were
    marked sent: everything the relay considers delivered."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT w.id::text FROM public.test_written w "
            "LEFT JOIN outbox.messages m ON m.id = w.id "
            "WHERE (m.id IS NULL OR m.sent_at IS NOT NULL) "
            "AND NOT EXISTS (SELECT 1 FROM outbox.dead_letters d WHERE d.id = w.id)"
        ).fetchall()
    return {row[0] for row in rows}
