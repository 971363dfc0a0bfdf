"""Versioned, idempotent migrations of the outbox and inbox schemas.

Migrations are ``NNNN_name.sql`` files grouped in tracks, shipped inside the wheel as
``relay/schema``:

- ``outbox``: the files of ``schema/``, recorded in ``<schema>.schema_migrations``;
- ``inbox``: the files of ``schema/inbox/``, recorded in ``<schema>.inbox_migrations``
  (the consumer-side deduplication table, see ``relay.inbox``).

A service that only consumes applies the inbox track alone and gets no outbox tables.
Each pending migration is applied once, in order, in one transaction for all tracks.
Concurrent ``migrate`` runs serialize on an advisory lock.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import scalar_row

from relay.errors import SchemaMissingError
from relay.sqlfiles import sql_directory

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.{versions} (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)"""
_RECORD = "INSERT INTO {schema}.{versions} (version, name) VALUES ({version}, {name})"


@dataclass(frozen=True)
class Track:
    """One independent line of migrations with its own version table."""

    name: str
    subdir: str
    version_table: str
    install_hint: str


TRACKS: dict[str, Track] = {
    "outbox": Track("outbox", "", "schema_migrations", "run `outbox-relay migrate`"),
    "inbox": Track(
        "inbox",
        "inbox",
        "inbox_migrations",
        "run `outbox-relay migrate` (or `outbox-relay migrate --inbox-only` on a consumer)",
    ),
}
ALL_TRACKS: tuple[str, ...] = ("outbox", "inbox")


def get_track(name: str) -> Track:
    try:
        return TRACKS[name]
    except KeyError:
        raise ValueError(
            f"no migration track named {name!r}; the tracks are {', '.join(TRACKS)}"
        ) from None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str
    track: str = "outbox"

    @property
    def label(self) -> str:
        """``0001_outbox`` for the outbox track, ``inbox/0001_inbox`` for others."""
        base = f"{self.version:04d}_{self.name}"
        return base if self.track == "outbox" else f"{self.track}/{base}"

    def render(self, schema: str) -> sql.Composed:
        return sql.SQL(self.template).format(schema=sql.Identifier(schema))

    def record(self, schema: str) -> sql.Composed:
        return sql.SQL(_RECORD).format(
            schema=sql.Identifier(schema),
            versions=sql.Identifier(get_track(self.track).version_table),
            version=self.version,
            name=self.name,
        )


def load_migrations(track: str = "outbox") -> list[Migration]:
    """The migrations of one track, in version order."""
    directory = sql_directory("schema")
    subdir = get_track(track).subdir
    if subdir:
        directory = directory.joinpath(subdir)
    found = []
    for path in sorted(directory.iterdir(), key=lambda entry: entry.name):
        match = _FILE_NAME.match(path.name)
        if match and path.is_file():
            template = path.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), template, track))
    return found


def latest_version(track: str = "outbox") -> int:
    return load_migrations(track)[-1].version


def _lock_key(schema: str) -> sql.Composed:
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext({}))").format(
        sql.Literal(f"outbox-relay migrate {schema}")
    )


def _bootstrap(schema: str, track: str) -> sql.Composed:
    return sql.SQL(_BOOTSTRAP).format(
        schema=sql.Identifier(schema), versions=sql.Identifier(get_track(track).version_table)
    )


def _check_tracks(tracks: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(tracks)
    for name in chosen:
        get_track(name)
    if not chosen:
        raise ValueError("choose at least one migration track")
    return chosen


def applied_versions(conn: psycopg.Connection[Any], schema: str, track: str = "outbox") -> set[int]:
    table = get_track(track).version_table
    # a cursor of our own row factory: the caller's connection may make dicts of rows
    with conn.cursor(row_factory=scalar_row) as cursor:
        exists = cursor.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
            (schema, table),
        ).fetchone()
        if not exists:
            return set()
        versions = cursor.execute(
            sql.SQL("SELECT version FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchall()
    return {int(version) for version in versions}


def migrate(
    conn: psycopg.Connection[Any], schema: str, tracks: Sequence[str] = ALL_TRACKS
) -> list[Migration]:
    """Apply every pending migration of ``tracks`` in one transaction; return those applied."""
    chosen = _check_tracks(tracks)
    applied: list[Migration] = []
    with conn.transaction():
        conn.execute(_lock_key(schema))
        for track in chosen:
            conn.execute(_bootstrap(schema, track))
            done = applied_versions(conn, schema, track)
            pending = [m for m in load_migrations(track) if m.version not in done]
            for migration in pending:
                conn.execute(migration.render(schema))
                conn.execute(migration.record(schema))
            applied.extend(pending)
    return applied


def render_script(
    schema: str,
    conn: psycopg.Connection[Any] | None = None,
    tracks: Sequence[str] = ALL_TRACKS,
    *,
    applied: Mapping[str, Collection[int]] | None = None,
) -> str:
    """The migrations as SQL, for teams that apply SQL with their own tool (Alembic,
    Flyway, Django, ...): one block per migration, each its own transaction that also
    creates the schema and version table if missing, so each can be pasted into a
    migration of that tool. Versions in ``applied`` (by track) are left out; the script
    is empty when nothing is left."""
    blocks = []
    for track in _check_tracks(tracks):
        done = (applied or {}).get(track, ())
        for migration in load_migrations(track):
            if migration.version not in done:
                blocks.append(_render_block(schema, migration, conn))
    return "\n".join(blocks)


def _render_block(schema: str, migration: Migration, conn: psycopg.Connection[Any] | None) -> str:
    parts = [
        f"-- migration {migration.label} of outbox-relay, schema {schema}: one transaction",
        "BEGIN;",
        _bootstrap(schema, migration.track).as_string(conn).strip() + ";",
        migration.render(schema).as_string(conn).strip(),
        migration.record(schema).as_string(conn) + ";",
        "COMMIT;",
    ]
    return "\n".join(parts) + "\n"


def applied_by_track(
    conn: psycopg.Connection[Any], schema: str, tracks: Sequence[str] = ALL_TRACKS
) -> dict[str, set[int]]:
    """The versions already applied in ``schema``, by track."""
    return {track: applied_versions(conn, schema, track) for track in _check_tracks(tracks)}


def require_schema(conn: psycopg.Connection[Any], schema: str, track: str = "outbox") -> int:
    """Raise SchemaMissingError unless the track's schema is installed and current."""
    hint = get_track(track).install_hint
    if schema != "outbox":  # the command to copy names the schema it is about
        hint = hint.replace("`outbox-relay migrate`", f"`outbox-relay migrate --schema {schema}`")
    done = applied_versions(conn, schema, track)
    if not done:
        raise SchemaMissingError(f"the database has no {track} schema {schema!r}; {hint} first")
    latest = latest_version(track)
    if max(done) < latest:
        raise SchemaMissingError(
            f"the {track} schema {schema!r} is at version {max(done)} but this relay needs "
            f"{latest}; {hint} to upgrade it"
        )
    return max(done)
