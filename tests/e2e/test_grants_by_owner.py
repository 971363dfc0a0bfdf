"""The grant scripts, run as documented (``| psql``) by a schema owner who is NOT a
superuser and does not own the database; and a relay role without them is told which
privilege it lacks instead of "cannot connect"."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.cli import outbox_relay
from tests.support.roles import login_role

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def psql(dsn: str, script: str) -> subprocess.CompletedProcess[str]:
    """The script through psql, as docs/security.md shows it: ``... | psql "$OWNER_DSN"``."""
    return subprocess.run(
        ["psql", "--no-psqlrc", "--quiet", dsn],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def schema_owner(db_dsn):
    """A plain LOGIN role that may create schemas in the database (CREATE on it), and
    nothing else: no superuser, not the database's owner. Yields (role, dsn)."""
    with login_role(db_dsn, prefix="owner") as (role, dsn), psycopg.connect(db_dsn) as conn:
        database = conn.info.dbname
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
        conn.commit()
        migrated = outbox_relay("migrate", "--dsn", dsn)
        assert migrated.returncode == 0, migrated.stderr
        yield role, dsn


def privileges(dsn: str, role: str) -> dict[str, bool]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT has_table_privilege(%(r)s, 'outbox.messages', 'UPDATE'),"
            " has_table_privilege(%(r)s, 'outbox.cdc_state', 'INSERT'),"
            " has_schema_privilege(%(r)s, 'outbox', 'USAGE'),"
            " (SELECT rolreplication FROM pg_roles WHERE rolname = %(r)s),"
            " EXISTS (SELECT FROM pg_publication WHERE pubname = 'outbox_relay_outbox')",
            {"r": role},
        ).fetchone()
    assert row is not None
    names = ("messages_update", "cdc_state_insert", "usage", "replication", "publication")
    return dict(zip(names, row, strict=True))


def grants(role: str, mode: str) -> str:
    printed = outbox_relay("migrate", "--print-grants", role, "--mode", mode)
    assert printed.returncode == 0, printed.stderr
    return printed.stdout


def test_the_polling_grants_run_cleanly_for_an_owner_who_is_not_a_superuser(db_dsn, schema_owner):
    _, owner_dsn = schema_owner
    with login_role(db_dsn) as (relay_role, relay_dsn):
        result = psql(owner_dsn, grants(relay_role, "poll"))
        assert result.returncode == 0, result.stderr
        # no "no privileges were granted" (CONNECT), no error: nothing to look into
        assert result.stderr == ""
        assert privileges(db_dsn, relay_role)["messages_update"]
        status = outbox_relay("status", "--dsn", relay_dsn)
        assert status.returncode == 0, status.stderr


def test_the_cdc_grants_stand_when_only_the_superuser_part_fails(db_dsn, schema_owner):
    _, owner_dsn = schema_owner
    with login_role(db_dsn) as (relay_role, _):
        script = grants(relay_role, "cdc")
        result = psql(owner_dsn, script)
        # the REPLICATION attribute alone failed, after the COMMIT of everything else
        assert result.stderr.count("ERROR:") == 1, result.stderr
        assert "REPLICATION" in result.stderr and "no privileges were granted" not in result.stderr
        assert privileges(db_dsn, relay_role) == {
            "messages_update": True,
            "cdc_state_insert": True,
            "usage": True,
            "replication": False,
            "publication": True,
        }
        # the labelled part, run by a superuser, completes the setup
        superuser_part = script.split("COMMIT;", 1)[1]
        assert "NEEDS A SUPERUSER" in superuser_part
        assert psql(db_dsn, superuser_part).returncode == 0
        assert privileges(db_dsn, relay_role)["replication"]
        # and the whole script may run again as the owner without an error
        again = psql(owner_dsn, script)
        assert again.returncode == 0 and "ERROR" not in again.stderr, again.stderr


def test_where_public_cannot_connect_the_owner_is_told_who_can_allow_it(db_dsn, schema_owner):
    _, owner_dsn = schema_owner
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(conn.info.dbname)
            )
        )
    with login_role(db_dsn) as (relay_role, _):
        # the schema owner is let in by name, as a database owner would do
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(conn.info.dbname), sql.Identifier(schema_owner[0])
                )
            )
        result = psql(owner_dsn, grants(relay_role, "poll"))
        assert result.returncode == 0, result.stderr
        assert f"role {relay_role} may not connect to database" in result.stderr
        assert "GRANT CONNECT ON DATABASE" in result.stderr  # the hint, for the db owner
        assert "no privileges were granted" not in result.stderr


def test_a_relay_role_without_grants_is_told_what_it_lacks(db_dsn, schema_owner):
    _, owner_dsn = schema_owner
    with login_role(db_dsn) as (relay_role, relay_dsn):
        result = outbox_relay("run", "--dsn", relay_dsn, "--connector", "memory")
        assert result.returncode == 1, result.stderr
        assert "cannot connect" not in result.stderr
        assert f"the role '{relay_role}' lacks USAGE on schema outbox" in result.stderr
        assert f"--print-grants {relay_role} --mode poll" in result.stderr
        # with USAGE only, each missing table privilege is named
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA outbox TO {}").format(sql.Identifier(relay_role))
            )
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA outbox TO {}").format(
                    sql.Identifier(relay_role)
                )
            )
        result = outbox_relay("run", "--dsn", relay_dsn, "--connector", "memory")
        assert result.returncode == 1, result.stderr
        assert "UPDATE on outbox.bucket_leases" in result.stderr
        assert "DELETE on outbox.messages" in result.stderr
        assert "SELECT on" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_replication_role_reads_every_change_through_a_slot_of_its_own(db_dsn):
    """What docs/security.md warns of: REPLICATION reaches past table privileges."""
    security = " ".join((ROOT / "docs" / "security.md").read_text().split())
    assert "read every change to every table of the database through it" in security
    slot = f"own_{secrets.token_hex(3)}"
    with login_role(db_dsn) as (role, role_dsn):
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} WITH REPLICATION").format(sql.Identifier(role)))
            conn.execute("CREATE TABLE private_notes (note text)")
            conn.execute("REVOKE ALL ON private_notes FROM PUBLIC")
        with psycopg.connect(role_dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT note FROM private_notes")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [slot])
            try:
                with psycopg.connect(db_dsn, autocommit=True) as owner:
                    owner.execute("INSERT INTO private_notes VALUES ('not yours to read')")
                changes = conn.execute(
                    "SELECT string_agg(data, ' ') FROM pg_logical_slot_get_changes(%s, NULL, NULL)",
                    [slot],
                ).fetchone()
                assert changes is not None and "not yours to read" in changes[0]
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
