"""`outbox-relay migrate --print` for teams that apply SQL with their own tool: one block
per migration, and with --dsn only what that database still needs."""

from __future__ import annotations

import re

import psycopg
import pytest

from relay.migrations import ALL_TRACKS, load_migrations
from tests.support.cli import outbox_relay

pytestmark = pytest.mark.e2e
LABELS = [m.label for track in ALL_TRACKS for m in load_migrations(track)]


def blocks(script: str) -> list[str]:
    """The script cut at each block's heading."""
    heading = r"(?m)^(?=-- migration \S+ of outbox-relay, )"
    return [b for b in re.split(heading, script) if b.strip()]


def label(block: str) -> str:
    match = re.match(r"-- migration (\S+) of outbox-relay, ", block)
    assert match, block[:200]
    return match.group(1)


def printed(*args: str) -> str:
    result = outbox_relay("migrate", "--print", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_a_database_every_migration_is_printed_as_its_own_transaction():
    every = blocks(printed())
    assert [label(b) for b in every] == LABELS
    for block in every:
        assert block.count("BEGIN;") == 1 and block.rstrip().endswith("COMMIT;")


def test_with_a_database_only_what_it_still_needs_is_printed(db_dsn):
    every = blocks(printed())
    assert [label(b) for b in blocks(printed("--dsn", db_dsn))] == LABELS  # an empty database
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for block in every[:3]:  # an older release's migrations, applied block by block
            conn.execute(block)  # type: ignore[arg-type]  # the printed SQL, verbatim
    pending = blocks(printed("--dsn", db_dsn))
    assert [label(b) for b in pending] == LABELS[3:]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for block in pending:
            conn.execute(block)  # type: ignore[arg-type]
    assert printed("--dsn", db_dsn) == ""  # up to date: nothing, and exit 0
    check = outbox_relay("migrate", "--dsn", db_dsn)
    assert "up to date" in check.stdout, check.stdout + check.stderr


def test_inbox_only_prints_only_the_inbox_track(db_dsn):
    assert outbox_relay("migrate", "--dsn", db_dsn, "--inbox-only").returncode == 0
    assert printed("--dsn", db_dsn, "--inbox-only") == ""
    outbox = blocks(printed("--dsn", db_dsn))
    assert [label(b) for b in outbox] == [m.label for m in load_migrations("outbox")]
