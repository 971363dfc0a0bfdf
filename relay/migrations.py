"""Versioned, idempotent migrations of the outbox schema.

Migrations are the ``NNNN_name.sql`` files of ``schema/`` (shipped inside the wheel as
``relay/schema``). Each is applied once, in order, inside one transaction, and recorded in
``<schema>.schema_migrations``. Concurrent ``migrate`` runs serialize on an advisory lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from relay.errors import SchemaMissingError

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)"""
_RECORD = "INSERT INTO {schema}.schema_migrations (version, name) VALUES ({version}, {name})"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str

    def render(self, schema: str) -> sql.Composed:
        return sql.SQL(self.template).format(schema=sql.Identifier(schema))  # type: ignore[arg-type]

    def record(self, schema: str) -> sql.Composed:
        return sql.SQL(_RECORD).format(
            schema=sql.Identifier(schema), version=self.version, name=self.name
        )


def migrations_dir() -> Path:
    """schema/ next to the package in a checkout, relay/schema inside an installed wheel."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "schema", package_dir.parent / "schema"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the outbox-relay migrations directory is missing from this install")


def load_migrations() -> list[Migration]:
    found = []
    for path in sorted(migrations_dir().iterdir()):
        match = _FILE_NAME.match(path.name)
        if match:
            template = path.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), template))
    return found


def latest_version() -> int:
    return load_migrations()[-1].version


def _lock_key(schema: str) -> sql.Composed:
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext({}))").format(
        sql.Literal(f"outbox-relay migrate {schema}")
    )


def applied_versions(conn: psycopg.Connection[object], schema: str) -> set[int]:
    exists = conn.execute(
        "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL", (schema,)
    ).fetchone()
    if not exists or not exists[0]:
        return set()
    rows = conn.execute(
        sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema))
    ).fetchall()
    return {int(row[0]) for row in rows}  # type: ignore[call-overload]


def migrate(conn: psycopg.Connection[object], schema: str) -> list[Migration]:
    """Apply every pending migration in one transaction; return the ones applied."""
    with conn.transaction():
        conn.execute(_lock_key(schema))
        conn.execute(sql.SQL(_BOOTSTRAP).format(schema=sql.Identifier(schema)))
        done = applied_versions(conn, schema)
        pending = [m for m in load_migrations() if m.version not in done]
        for migration in pending:
            conn.execute(migration.render(schema))
            conn.execute(migration.record(schema))
    return pending


def render_script(schema: str, conn: psycopg.Connection[object] | None = None) -> str:
    """The whole migration as one SQL script, for teams that apply SQL with their own tool."""
    parts = ["BEGIN;", sql.SQL(_BOOTSTRAP).format(schema=sql.Identifier(schema)).as_string(conn)]
    parts[-1] += ";"
    for migration in load_migrations():
        parts.append(f"-- migration {migration.version:04d}_{migration.name}")
        parts.append(migration.render(schema).as_string(conn).strip())
        parts.append(migration.record(schema).as_string(conn) + ";")
    parts.append("COMMIT;")
    return "\n".join(parts) + "\n"


def require_schema(conn: psycopg.Connection[object], schema: str) -> int:
    """Raise SchemaMissingError unless the outbox schema is installed and current."""
    done = applied_versions(conn, schema)
    if not done:
        raise SchemaMissingError(
            f"the database has no outbox schema {schema!r}; run `outbox-relay migrate` first"
        )
    latest = latest_version()
    if max(done) < latest:
        raise SchemaMissingError(
            f"the outbox schema {schema!r} is at version {max(done)} but this relay needs "
            f"{latest}; run `outbox-relay migrate` to upgrade it"
        )
    return max(done)
