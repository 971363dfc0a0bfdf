"""The producer role as an attacker would use it: a LOGIN role with exactly what
``outbox-relay migrate --print-grants ROLE --mode producer`` prints (and none of PUBLIC's
defaults) writes events every way there is, and cannot reach the relay's bookkeeping."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

import relay
from tests.support.cli import outbox_relay
from tests.support.roles import grant_printed, login_role, revoke_public_defaults

pytestmark = pytest.mark.e2e


@pytest.fixture
def owned_outbox(db_dsn):
    """The outbox, migrated by its owner, with PUBLIC's default privileges revoked."""
    result = outbox_relay("migrate", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    revoke_public_defaults(db_dsn)
    return db_dsn


def register_listening_relay(dsn: str) -> None:
    """A polling relay waiting for work, so the wake-up trigger goes as far as NOTIFY."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox.relays (relay_id, name, mode, expires_at)"
            " VALUES (gen_random_uuid(), 'waiting', 'poll', now() + interval '1 hour')"
        )


TRAPS = [
    "CREATE FUNCTION trap.now() RETURNS timestamptz",
    "CREATE FUNCTION trap.pg_notify(text, text) RETURNS void",
    "CREATE FUNCTION trap.eq(text, text) RETURNS boolean",
    "CREATE FUNCTION trap.gt(timestamptz, timestamptz) RETURNS boolean",
    "CREATE FUNCTION trap.cat(name, text) RETURNS text",
]
OPERATORS = [
    "CREATE OPERATOR trap.= (FUNCTION = trap.eq, LEFTARG = text, RIGHTARG = text)",
    "CREATE OPERATOR trap.> (FUNCTION = trap.gt, LEFTARG = timestamptz, RIGHTARG = timestamptz)",
    "CREATE OPERATOR trap.|| (FUNCTION = trap.cat, LEFTARG = name, RIGHTARG = text)",
]


def test_the_wake_up_trigger_cannot_be_redirected_by_a_writers_search_path(owned_outbox):
    """notify_relays() runs with its owner's rights for every writer: a writer that puts
    its own functions and operators before pg_catalog must not get them called."""
    register_listening_relay(owned_outbox)
    with login_role(owned_outbox, "writer") as (role, role_dsn):
        grant_printed(owned_outbox, role, "producer")
        with psycopg.connect(owned_outbox, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE SCHEMA trap AUTHORIZATION {}").format(sql.Identifier(role))
            )
            admin.execute('LISTEN "outbox.messages"')
            with psycopg.connect(role_dsn, autocommit=True) as conn:
                for head in TRAPS:
                    conn.execute(
                        f"{head} LANGUAGE plpgsql AS $$ BEGIN"  # type: ignore[arg-type]
                        " RAISE EXCEPTION 'the trap ran as %', current_user; END $$"
                    )
                for operator in OPERATORS:
                    conn.execute(operator)  # type: ignore[arg-type]
                conn.execute("SET search_path = trap, pg_catalog")
                conn.execute(
                    "INSERT INTO outbox.messages (topic, key, payload) VALUES ('t', 'k', '1')"
                )
                relay.enqueue(conn, topic="t", key="k", payload=2)
            woken = list(admin.notifies(timeout=5, stop_after=1))
    assert {n.channel for n in woken} == {"outbox.messages"}
