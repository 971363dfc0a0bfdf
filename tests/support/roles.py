"""Least-privileged PostgreSQL roles for the security tests: created with exactly what
``outbox-relay migrate --print-grants`` prints, dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.cli import outbox_relay


def revoke_public_defaults(dsn: str, schema: str = "outbox") -> None:
    """Take away what PUBLIC gets by default, so only the printed grants count."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database))
        )
        conn.execute(
            sql.SQL("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {} FROM PUBLIC").format(
                sql.Identifier(schema)
            )
        )
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")


def grant_printed(dsn: str, role: str, mode: str, schema: str = "outbox") -> str:
    """Apply ``migrate --print-grants ROLE --mode MODE`` as the owner; return the script."""
    printed = outbox_relay("migrate", "--schema", schema, "--print-grants", role, "--mode", mode)
    assert printed.returncode == 0, printed.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(printed.stdout)  # type: ignore[arg-type]  # the script, verbatim
    return printed.stdout


@contextmanager
def login_role(admin_dsn: str, prefix: str = "relay") -> Iterator[tuple[str, str]]:
    """A LOGIN role without any attribute (no superuser, no replication); yields its name
    and a DSN for ``admin_dsn``'s database as that role. Dropped with what it was given."""
    role = f"{prefix}_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                "NOBYPASSRLS PASSWORD {}"
            ).format(sql.Identifier(role), sql.Literal(password))
        )
    params = conninfo_to_dict(admin_dsn)
    params.update(user=role, password=password)
    try:
        yield role, make_conninfo(**{k: str(v) for k, v in params.items()})
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def role_attributes(dsn: str, role: str) -> dict[str, bool]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolreplication, rolcreatedb, rolcreaterole, rolbypassrls"
            " FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone()
    assert row is not None
    names = ("superuser", "replication", "createdb", "createrole", "bypassrls")
    return dict(zip(names, row, strict=True))
