"""The operability flags and the dead-letters commands, through the installed command."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import psycopg
import pytest

from tests.support.cli import RelayProcess, clean_env, outbox_relay
from tests.support.services import free_port

pytestmark = pytest.mark.e2e


def migrate(dsn):
    result = outbox_relay("migrate", "--dsn", dsn)
    assert result.returncode == 0, result.stderr


def test_a_bad_poison_policy_or_log_format_is_one_sentence(db_dsn):
    result = outbox_relay(
        "run",
        "--dsn",
        db_dsn,
        "--on-poison",
        "maybe",
        "--log-format",
        "xml",
        "--retry-cap",
        "100ms",
    )
    assert result.returncode == 2
    assert "poison-message policy 'maybe' is unknown" in result.stderr
    assert "log format 'xml' is unknown" in result.stderr
    assert "retry cap must not be smaller" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_new_flag_has_an_environment_variable(db_dsn):
    env = clean_env(OUTBOX_RELAY_ON_POISON="nope", OUTBOX_RELAY_MAX_ATTEMPTS="0")
    result = outbox_relay("run", "--dsn", db_dsn, env=env)
    assert result.returncode == 2
    assert "'nope'" in result.stderr and "at least 1" in result.stderr


def test_json_logs_and_the_health_endpoints_of_a_running_relay(db_dsn, tmp_path):
    migrate(db_dsn)
    port = free_port()
    args = [
        "--dsn", db_dsn, "--connector", "memory", "--log-format", "json",
        "--metrics-port", str(port), "--lease-ttl", "2s", "--publish-timeout", "1s",
    ]  # fmt: skip
    relay = RelayProcess(args, tmp_path / "relay.log")
    try:
        relay.wait_for_log("now leases", timeout=30)
        first = json.loads(relay.output().splitlines()[0])
        assert {"time", "level", "logger", "message"} <= set(first)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
        assert "outbox_relay_buckets_owned" in body
        assert 'outbox_relay_db_session_connected{duty="claim-0"}' in body
        assert relay.terminate() == 0
    finally:
        relay.stop()


def test_dead_letters_commands_explain_themselves(db_dsn):
    migrate(db_dsn)
    listed = outbox_relay("dead-letters", "list", "--dsn", db_dsn)
    assert listed.returncode == 0 and "no dead letters match" in listed.stdout
    unbounded = outbox_relay("dead-letters", "retry", "--dsn", db_dsn)
    assert unbounded.returncode == 2 and "name the dead letters to retry" in unbounded.stderr
    missing = outbox_relay("dead-letters", "show", str(uuid.uuid4()), "--dsn", db_dsn)
    assert missing.returncode == 1 and "no dead letter with id" in missing.stderr
    bad = outbox_relay("dead-letters", "drop", "not-a-uuid", "--dsn", db_dsn)
    assert bad.returncode == 2 and "is not a message id" in bad.stderr


def test_dead_letters_list_show_and_drop_all(db_dsn):
    migrate(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        for n in range(3):
            conn.execute("SELECT outbox.enqueue('t', %s, '{\"n\": 1}')", (f"k{n}",))
        conn.execute("UPDATE outbox.messages SET parked_at = now(), last_error = 'refused'")
    table = outbox_relay("dead-letters", "list", "--dsn", db_dsn, "--limit", "2")
    assert table.returncode == 0, table.stderr
    assert "refused" in table.stdout and "1 more" in table.stdout
    listed = json.loads(outbox_relay("dead-letters", "list", "--dsn", db_dsn, "--json").stdout)
    assert listed["total"] == 3
    shown = outbox_relay("dead-letters", "show", listed["dead_letters"][0]["id"], "--dsn", db_dsn)
    assert 'payload:     {"n":1}' in shown.stdout
    dropped = outbox_relay("dead-letters", "drop", "--all", "--dsn", db_dsn)
    assert dropped.returncode == 0 and "3 dead letters dropped" in dropped.stdout


def test_a_cdc_relay_answers_its_health_probes_too(db_dsn, tmp_path):
    migrate(db_dsn)
    port = free_port()
    args = [
        "--dsn", db_dsn, "--mode", "cdc", "--connector", "memory",
        "--metrics-port", str(port), "--lease-ttl", "2s", "--publish-timeout", "1s",
    ]  # fmt: skip
    relay = RelayProcess(args, tmp_path / "relay.log")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)  # a poll with a deadline: the relay starts in its own time
        else:
            raise AssertionError(f"/readyz never answered 200:\n{relay.output()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            assert answer.status == 200
        assert relay.terminate() == 0
    finally:
        relay.stop()


def test_a_second_relay_on_the_same_metrics_port_refuses_to_start(db_dsn, tmp_path):
    """Its probes would reach the first relay and call it healthy: one sentence, exit 1.
    With --metrics-port 0 it runs beside the first."""
    migrate(db_dsn)
    port = free_port()
    args = ["--dsn", db_dsn, "--connector", "memory", "--metrics-port", str(port)]
    first = RelayProcess(args, tmp_path / "first.log")
    try:
        first.wait_for_log("metrics and health on", timeout=30)
        second = outbox_relay("run", *args, timeout=60)
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"outbox-relay: error: cannot serve metrics and health on 127.0.0.1:{port}: "
            "address already in use (another relay there?); choose another --metrics-port, "
            "or 0 to turn the server off"
        ]
        without = RelayProcess([*args[:-1], "0"], tmp_path / "without.log")
        try:
            without.wait_for_log("started", timeout=30)
            assert without.terminate() == 0
        finally:
            without.stop()
        assert first.terminate() == 0
    finally:
        first.stop()
