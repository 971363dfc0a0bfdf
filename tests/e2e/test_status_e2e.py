"""`outbox-relay status` and `--version` as a person runs them."""

from __future__ import annotations

import secrets
from importlib.metadata import version

import orjson
import psycopg
import pytest

from tests.support.cli import outbox_relay
from tests.support.services import create_database, drop_database

pytestmark = pytest.mark.e2e


@pytest.fixture
def other_database(pg_dsn):
    """A second database of the same cluster, dropped (with its slots) afterwards."""
    name = f"other_{secrets.token_hex(3)}"
    yield create_database(pg_dsn, name)
    drop_database(pg_dsn, name)


def test_a_slot_of_the_same_name_in_another_database_is_not_this_ones(db_dsn, other_database):
    """Slot names are cluster-wide: outbox_relay_outbox decoding another database says
    nothing about this one's outbox."""
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    with psycopg.connect(other_database, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('outbox_relay_outbox', 'pgoutput')")
    try:
        text = outbox_relay("status", "--dsn", db_dsn)
        assert text.returncode == 0, text.stderr
        assert "cdc" not in text.stdout
        shown = outbox_relay("status", "--dsn", db_dsn, "--json")
        assert "cdc" not in orjson.loads(shown.stdout)
        asked = outbox_relay("status", "--dsn", db_dsn, "--cdc-slot", "outbox_relay_outbox")
        assert "cdc slot:            outbox_relay_outbox (missing)" in asked.stdout
        # in its own database the slot is shown
        there = outbox_relay("migrate", "--dsn", other_database)
        assert there.returncode == 0, there.stderr
        own = outbox_relay("status", "--dsn", other_database)
        assert "cdc slot:            outbox_relay_outbox (idle" in own.stdout
    finally:
        with psycopg.connect(other_database, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('outbox_relay_outbox')")


def test_version_flag_and_status_json_name_the_installed_version(db_dsn):
    installed = version("outbox-relay")
    result = outbox_relay("--version")
    assert result.returncode == 0 and result.stdout == f"outbox-relay {installed}\n"
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    status = outbox_relay("status", "--dsn", db_dsn, "--json")
    assert orjson.loads(status.stdout)["version"] == installed
