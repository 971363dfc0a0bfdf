"""The relay runs without superuser: a LOGIN role with exactly the privileges
``outbox-relay migrate --print-grants`` prints (and none of PUBLIC's defaults) relays
messages, parks a refused one, and runs ``status`` and the dead-letter tools."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest
import typer.main

from relay.cli.app import app
from tests.support.cli import RelayProcess, clean_env, outbox_relay
from tests.support.http import http_get
from tests.support.kafka_harness import INVALID_TOPIC, KafkaHarness
from tests.support.roles import grant_printed, login_role, revoke_public_defaults, role_attributes
from tests.support.services import free_port

pytestmark = pytest.mark.e2e
FAST = [
    "--lease-ttl",
    "3s",
    "--publish-timeout",
    "1s",
    "--poll-interval",
    "500ms",
    "--shutdown-timeout",
    "10s",
]
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


@pytest.fixture
def kafka(kafka_bootstrap):
    harness = KafkaHarness(kafka_bootstrap)
    yield harness
    harness.cleanup()


@pytest.fixture
def owned_outbox(db_dsn):
    """The outbox, migrated by its owner, with PUBLIC's default privileges revoked."""
    result = outbox_relay("migrate", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    revoke_public_defaults(db_dsn)
    return db_dsn


def status_of(dsn: str) -> dict:
    result = outbox_relay("status", "--json", env=clean_env(OUTBOX_RELAY_DSN=dsn))
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def enqueue(dsn: str, topic: str, count: int, key_prefix: str = "k") -> None:
    with psycopg.connect(dsn) as conn:
        for i in range(count):
            conn.execute(
                "SELECT outbox.enqueue(%s, %s, %s::jsonb)",
                (topic, f"{key_prefix}{i % 5}", orjson.dumps({"n": i}).decode()),
            )


def enqueue_delayed(dsn: str, topic: str, seconds: float = 1.0) -> None:
    """A delayed message: it waits in the scheduled table, which the relay role moves
    into the outbox when due."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at) "
            "VALUES (%s, 'later', '{}', now() + make_interval(secs => %s))",
            (topic, seconds),
        )


def assert_no_privilege_errors(output: str) -> None:
    assert "permission denied" not in output.lower(), output
    assert "Traceback" not in output, output


def test_a_polling_relay_role_with_only_the_printed_grants_relays_to_kafka(
    owned_outbox, kafka, tmp_path
):
    with login_role(owned_outbox) as (role, role_dsn):
        grant_printed(owned_outbox, role, "poll")
        assert not any(role_attributes(owned_outbox, role).values())
        topic = kafka.new_topic()
        enqueue(owned_outbox, INVALID_TOPIC, 1, key_prefix="refused")
        enqueue(owned_outbox, topic, 30)
        enqueue_delayed(owned_outbox, topic)
        port = free_port()
        relay = RelayProcess(
            [
                "--dsn",
                role_dsn,
                "--kafka-bootstrap",
                kafka.bootstrap,
                "--retention",
                "0",
                "--metrics-port",
                str(port),
                *FAST,
            ],
            tmp_path / "relay.log",
        )
        try:
            received = kafka.read(topic, 31, timeout=60)
            assert len(received) == 31
            # the metrics sampler reads the outbox as this role too
            wait_for(lambda: http_get(port, "/readyz")[0] == 200, 30, "/readyz")
            assert "outbox_relay" in http_get(port, "/metrics")[1]
            status = wait_for(
                lambda: (s := status_of(role_dsn))["pending"] == 0 and s["parked"] == 1 and s,
                30,
                "the outbox drained and the refused message parked",
            )
            assert [r["alive"] for r in status["relays"]] == [True]
            assert sum(len(r["buckets"]) for r in status["relays"]) == 256
            _dead_letter_tools_work(role_dsn)
            assert relay.terminate() == 0
        finally:
            relay.stop()
        assert_no_privilege_errors(relay.log_path.read_text())
        assert status_of(role_dsn)["relays"] == []  # it forgot itself on the way out


def _dead_letter_tools_work(role_dsn: str) -> None:
    if "dead-letters" not in COMMANDS:
        return
    env = clean_env(OUTBOX_RELAY_DSN=role_dsn)
    listed = outbox_relay("dead-letters", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert orjson.loads(listed.stdout)["total"] == 1
    dropped = outbox_relay("dead-letters", "drop", "--all", env=env)
    assert dropped.returncode == 0, dropped.stderr
    assert_no_privilege_errors(listed.stderr + dropped.stderr)


def test_a_polling_relay_role_marks_sent_and_keeps_rows_for_retention(owned_outbox, tmp_path):
    with login_role(owned_outbox) as (role, role_dsn):
        grant_printed(owned_outbox, role, "poll")
        enqueue(owned_outbox, "orders", 20)
        relay = RelayProcess(
            # the UPDATE path: sent rows are kept (the default deletes them; the test above)
            ["--dsn", role_dsn, "--connector", "memory", "--metrics-port", "0",
             "--retention", "1h", *FAST],
            tmp_path / "relay.log",
        )
        try:
            wait_for(
                lambda: status_of(role_dsn)["sent_last_minute"] == 20, 30, "20 rows marked sent"
            )
            assert relay.terminate() == 0
        finally:
            relay.stop()
        assert_no_privilege_errors(relay.log_path.read_text())


def test_without_the_grants_the_role_gets_one_clear_line(owned_outbox):
    with login_role(owned_outbox) as (_role, role_dsn):
        result = outbox_relay("status", "--dsn", role_dsn)
    assert result.returncode != 0
    assert "permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_producer_role_enqueues_but_cannot_read_or_relay(owned_outbox):
    import relay

    with login_role(owned_outbox, "writer") as (role, role_dsn):
        grant_printed(owned_outbox, role, "producer")
        with psycopg.connect(role_dsn) as conn:
            message_id = relay.enqueue(conn, topic="orders", key="k", payload={"a": 1})
            conn.execute("SELECT outbox.enqueue_binary('images', NULL, '\\x00ff'::bytea)")
            conn.execute("SELECT outbox.emit('orders', 'k', '{}')")
        enqueue_delayed(role_dsn, "orders", 60)
        with psycopg.connect(role_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT payload FROM outbox.messages")
    with psycopg.connect(owned_outbox) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM outbox.messages ORDER BY seq")]
        scheduled = conn.execute("SELECT count(*) FROM outbox.scheduled").fetchone()[0]
    assert ids[0] == message_id and len(ids) == 2 and scheduled == 1


CDC_FAST = [
    "--mode", "cdc", "--cdc-takeover-ttl", "2s", "--cdc-heartbeat", "1s",
    "--publish-timeout", "1s", "--shutdown-timeout", "10s", "--metrics-port", "0",
]  # fmt: skip


def test_a_cdc_relay_role_with_only_the_printed_grants_streams_to_kafka(
    owned_outbox, kafka, tmp_path
):
    with login_role(owned_outbox) as (role, role_dsn):
        grant_printed(owned_outbox, role, "cdc")
        attributes = role_attributes(owned_outbox, role)
        assert attributes.pop("replication") and not any(attributes.values())
        topic = kafka.new_topic()
        enqueue(owned_outbox, topic, 5)  # before the slot: published from its snapshot
        relay = RelayProcess(
            ["--dsn", role_dsn, "--kafka-bootstrap", kafka.bootstrap, *CDC_FAST],
            tmp_path / "relay.log",
        )
        try:
            relay.wait_for_log("leads CDC on slot", 30)
            enqueue(owned_outbox, topic, 20)
            enqueue_delayed(owned_outbox, topic)
            enqueue(owned_outbox, INVALID_TOPIC, 1, key_prefix="refused")
            with psycopg.connect(owned_outbox) as conn:
                for i in range(5):
                    conn.execute("SELECT outbox.emit(%s, 'e', %s::jsonb)", (topic, f'{{"e": {i}}}'))
            assert len(kafka.read(topic, 31, timeout=60)) == 31
            wait_for(lambda: status_of(role_dsn)["parked"] == 1, 30, "the refused message parked")
            assert [r["mode"] for r in status_of(role_dsn)["relays"]] == ["cdc"]
            assert relay.terminate() == 0
        finally:
            relay.stop()
        assert_no_privilege_errors(relay.log_path.read_text())
