"""Migration tracks (outbox + inbox, or the inbox alone) and ``outbox-relay inbox purge``."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from relay.cli.app import clear_errors, connect_either
from relay.cli.inbox import build_inbox_app
from relay.errors import SchemaMissingError
from relay.migrations import (
    latest_version,
    load_migrations,
    migrate,
    render_script,
    require_schema,
)

pytestmark = pytest.mark.integration


def tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    ).fetchall()
    return {row[0] for row in rows}


INBOX_TABLES = {"inbox", "inbox_migrations"}
# the outbox track grows on its own (other tables may join these)
OUTBOX_TABLES = {"messages", "key_holds", "relays", "bucket_leases", "schema_migrations"}


def labels(track: str) -> list[str]:
    return [m.label for m in load_migrations(track)]


def test_migrate_applies_both_tracks_once(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        applied = migrate(conn, "outbox")
        assert [m.label for m in applied] == labels("outbox") + labels("inbox")
        assert labels("outbox")[0] == "0001_outbox" and labels("inbox")[0] == "inbox/0001_inbox"
        assert migrate(conn, "outbox") == []
        assert tables(conn, "outbox") >= OUTBOX_TABLES | INBOX_TABLES
        assert require_schema(conn, "outbox") == latest_version()
        assert require_schema(conn, "outbox", track="inbox") == latest_version("inbox")


def test_an_inbox_only_service_gets_no_outbox_tables(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        applied = migrate(conn, "app", tracks=("inbox",))
        assert [m.label for m in applied] == labels("inbox")
        assert tables(conn, "app") == INBOX_TABLES
        with pytest.raises(SchemaMissingError, match="no outbox schema 'app'"):
            require_schema(conn, "app")
        # the service starts producing later: the outbox track follows on its own
        assert [m.label for m in migrate(conn, "app")] == labels("outbox")
        assert tables(conn, "app") >= OUTBOX_TABLES | INBOX_TABLES


def test_the_printed_script_matches_what_migrate_builds(db_dsn):
    script = render_script("scripted", tracks=("inbox",))
    assert "messages" not in script and "inbox_migrations" in script
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(render_script("scripted"))
        migrate(conn, "migrated")
        assert tables(conn, "scripted") == tables(conn, "migrated")
        assert migrate(conn, "scripted") == []


def test_an_unknown_track_is_refused(db_dsn):
    with (
        psycopg.connect(db_dsn, autocommit=True) as conn,
        pytest.raises(ValueError, match="no migration track named 'inbx'"),
    ):
        migrate(conn, "outbox", tracks=("inbx",))


def test_a_missing_inbox_schema_names_the_inbox_only_migration(db_dsn):
    with (
        psycopg.connect(db_dsn, autocommit=True) as conn,
        pytest.raises(SchemaMissingError, match="migrate --inbox-only"),
    ):
        require_schema(conn, "outbox", track="inbox")


# --- outbox-relay inbox purge -------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    """A root app that mounts the sub-app the way relay/cli/app.py does."""
    root = typer.Typer()
    root.add_typer(build_inbox_app(clear_errors, connect_either), name="inbox")
    return root


def test_inbox_purge_deletes_old_entries(cli, db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox", tracks=("inbox",))
        conn.execute(
            "INSERT INTO outbox.inbox (consumer, message_id, processed_at) "
            "SELECT 'billing', 'm-' || i, now() - (i || ' hours 30 minutes')::interval "
            "FROM generate_series(1, 48) AS i"
        )
    result = CliRunner().invoke(
        cli, ["inbox", "purge", "--dsn", db_dsn, "--older-than", "36h", "--batch-size", "5"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "inbox 'outbox': removed 13 entries older than 36h"
    result = CliRunner().invoke(
        cli,
        ["inbox", "purge", "--older-than", "1h", "--consumer", "shipping"],
        env={"OUTBOX_RELAY_DSN": db_dsn},
    )
    assert result.exit_code == 0, result.output
    assert "removed 0 entries of consumer 'shipping'" in result.stdout


def test_inbox_purge_without_the_table_fails_with_one_line(cli, db_dsn):
    result = CliRunner().invoke(cli, ["inbox", "purge", "--dsn", db_dsn])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "outbox-relay: error: the database has no inbox schema 'outbox'; run `outbox-relay "
        "migrate` (or `outbox-relay migrate --inbox-only` on a consumer) first"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--older-than", "a week"], "is not a duration"),
        (["--schema", "Bad-Name"], "not a plain identifier"),
        (["--batch-size", "0"], "at least 1"),
    ],
)
def test_inbox_purge_reports_bad_input_as_usage_errors(cli, args, message):
    result = CliRunner().invoke(cli, ["inbox", "purge", "--dsn", "dbname=unused", *args])
    assert result.exit_code == 2
    assert message in result.stderr
