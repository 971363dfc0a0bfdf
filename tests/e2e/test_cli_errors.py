"""Bad input gets one clear line and a non-zero exit, never a traceback or a password."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.support.cli import clean_env, outbox_relay, user_env

pytestmark = pytest.mark.e2e
CANARY = "Canary-pw-7391"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_clean_failure(result, code=1):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert CANARY not in result.stderr + result.stdout


def test_unknown_flag_exits_2_with_usage():
    result = outbox_relay("run", "--no-such-flag")
    assert_clean_failure(result, 2)
    assert "No such option" in result.stderr
    assert "Usage" in result.stderr


def test_unreachable_database_names_the_target_but_not_the_password():
    dsn = f"postgresql://app:{CANARY}@127.0.0.1:{closed_port()}/orders"
    result = outbox_relay("run", "--dsn", dsn, "--connector", "memory")
    assert_clean_failure(result)
    assert "cannot connect to PostgreSQL at app@127.0.0.1:" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_password_in_key_value_dsn_via_environment_is_not_printed():
    env = clean_env(OUTBOX_RELAY_DSN=f"host=127.0.0.1 port={closed_port()} password={CANARY}")
    result = outbox_relay("status", env=env)
    assert_clean_failure(result)
    assert "cannot connect" in result.stderr


def test_database_without_the_outbox_says_to_migrate(db_dsn):
    result = outbox_relay("run", "--dsn", db_dsn, "--connector", "memory")
    assert_clean_failure(result)
    assert "run `outbox-relay migrate`" in result.stderr


@pytest.mark.parametrize("schema", ["bad;name", 'x"y', "Outbox", "1st"])
def test_schema_names_that_are_not_plain_identifiers_are_refused(schema):
    result = outbox_relay("migrate", "--print", "--schema", schema)
    assert_clean_failure(result, 2)
    assert "not a plain identifier" in result.stderr


def test_unknown_connector_lists_the_installed_ones(db_dsn):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    result = outbox_relay("run", "--dsn", db_dsn, "--connector", "carrier-pigeon")
    assert_clean_failure(result, 2)
    assert "installed connectors: kafka, memory, rabbitmq" in result.stderr


def test_an_installed_relay_has_no_connector_that_sends_nowhere(db_dsn):
    """The in-memory test double deletes rows and publishes them nowhere: a user cannot
    name it; only the test run registers it."""
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    result = outbox_relay("run", "--dsn", db_dsn, "--connector", "memory", env=user_env())
    assert_clean_failure(result, 2)
    assert "unknown connector 'memory'; installed connectors: kafka, rabbitmq" in result.stderr


def test_unreachable_kafka_names_the_bootstrap(db_dsn):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    bootstrap = f"127.0.0.1:{closed_port()}"
    result = outbox_relay(
        "run",
        "--dsn",
        db_dsn,
        "--kafka-bootstrap",
        bootstrap,
        "--kafka-option",
        f"sasl.password={CANARY}",
        timeout=60,
    )
    assert_clean_failure(result)
    assert bootstrap in result.stderr


def test_unreachable_rabbitmq_names_the_host_but_not_the_password(db_dsn):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    url = f"amqp://relay:{CANARY}@127.0.0.1:{closed_port()}/%2F"
    result = outbox_relay("run", "--dsn", db_dsn, "--connector", "rabbitmq", "--amqp-url", url)
    assert_clean_failure(result)
    assert "127.0.0.1" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--batch-size", "0", "batch size"),
        ("--claim-lanes", "0", "claim lanes must be between 1 and 16"),
        ("--poll-linger", "2s", "poll linger must be between 0 and 1 second"),
        ("--poll-linger", "soon", "not a duration"),
        ("--lease-ttl", "soon", "not a duration"),
        ("--mode", "stream", "mode 'stream' is unknown"),
        ("--kafka-option", "novalue", "name=value"),
    ],
)
def test_bad_flag_values_are_explained(flag, value, expected):
    result = outbox_relay("run", "--dsn", "postgresql://localhost/x", flag, value)
    assert_clean_failure(result, 2)
    assert expected in result.stderr


def test_migrate_is_idempotent_and_status_reads_the_outbox(db_dsn):
    first = outbox_relay("migrate", "--dsn", db_dsn)
    second = outbox_relay("migrate", "--dsn", db_dsn)
    assert "applied 0001_outbox" in first.stdout
    assert "up to date" in second.stdout
    with psycopg.connect(db_dsn) as conn:
        conn.execute("SELECT outbox.enqueue('orders', 'k', '{\"a\": 1}')")
    status = outbox_relay("status", "--json", env=clean_env(OUTBOX_RELAY_DSN=db_dsn))
    assert status.returncode == 0, status.stderr
    assert '"pending": 1' in status.stdout


def test_help_lists_the_environment_variable_of_every_flag():
    result = outbox_relay("run", "--help", env=clean_env(COLUMNS="200"))
    flags = [line for line in result.stdout.splitlines() if line.strip().startswith("│ --")]
    assert len(flags) >= 15
    assert result.stdout.count("OUTBOX_RELAY_") >= len(flags) - 1  # --help has no variable
