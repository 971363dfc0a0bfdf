"""The outbox as an earlier release left it: the migrations up to some version applied
and recorded one by one, as successive releases would have, so a test can write rows
the way that release did and then upgrade."""

from __future__ import annotations

from typing import Any

import psycopg

from relay.migrations import load_migrations

VERSIONS_TABLE = (
    "CREATE TABLE outbox.schema_migrations (version integer PRIMARY KEY, "
    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)


def start_old_outbox(conn: psycopg.Connection[Any]) -> None:
    """The schema and its version table, nothing migrated yet."""
    conn.execute("CREATE SCHEMA outbox")
    conn.execute(VERSIONS_TABLE)  # type: ignore[arg-type]


def apply_migrations(
    conn: psycopg.Connection[Any], *, after: int = 0, through: int | None = None
) -> None:
    """Apply and record the outbox migrations numbered after ``after``, through
    ``through`` (all of them if None), each in a transaction of its own."""
    for migration in load_migrations("outbox"):
        if migration.version > after and (through is None or migration.version <= through):
            with conn.transaction():
                conn.execute(migration.render("outbox"))
                conn.execute(migration.record("outbox"))


def old_outbox(conn: psycopg.Connection[Any], through: int) -> None:
    """The outbox as the release with migration ``through`` left it."""
    start_old_outbox(conn)
    apply_migrations(conn, through=through)
