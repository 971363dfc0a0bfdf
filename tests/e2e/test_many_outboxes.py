"""One installed relay process draining several outboxes: two PostgreSQL servers, two
schemas in each, read back with a plain Kafka consumer (docs/multi-tenant.md)."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.support.cli import RelayProcess, outbox_relay
from tests.support.http import http_get
from tests.support.kafka_harness import KafkaHarness
from tests.support.processes import free_port
from tests.support.services import ThrowawayPostgres

pytestmark = pytest.mark.e2e
SCHEMAS = ("tenant_a", "tenant_b")
FAST = [
    "--lease-ttl",
    "3s",
    "--publish-timeout",
    "1s",
    "--poll-interval",
    "500ms",
    "--retry-base",
    "100ms",
    "--retry-cap",
    "1s",
    "--shutdown-timeout",
    "10s",
]


@pytest.fixture
def kafka(kafka_bootstrap):
    harness = KafkaHarness(kafka_bootstrap)
    yield harness
    harness.cleanup()


@pytest.fixture
def second_server():
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture
def relays(tmp_path):
    started: list[RelayProcess] = []

    def start(*args: str) -> RelayProcess:
        process = RelayProcess([*args], tmp_path / f"relay-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def migrate(dsn: str, *schemas: str) -> None:
    for schema in schemas:
        result = outbox_relay("migrate", "--dsn", dsn, "--schema", schema)
        assert result.returncode == 0, result.stderr


def write(dsn: str, schema: str, topic: str, label: str, numbers: range) -> None:
    """One event per transaction, ten keys, numbered in commit order per outbox."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in numbers:
            conn.execute(
                sql.SQL("SELECT {}.enqueue(%s, %s, %s::jsonb)").format(sql.Identifier(schema)),
                (topic, f"k{n % 10}", orjson.dumps({"outbox": label, "n": n}).decode()),
            )


def received_by_outbox(
    kafka: KafkaHarness, topic: str, count: int, timeout: float = 60
) -> dict[str, list[dict]]:
    got = kafka.read(topic, count, timeout=timeout)
    by_outbox: dict[str, list[dict]] = defaultdict(list)
    for message in got:
        event = orjson.loads(message.value or b"{}")
        by_outbox[event["outbox"]].append({"key": message.key, "n": event["n"]})
    return by_outbox


def assert_complete_and_in_key_order(events: list[dict], numbers: range) -> None:
    assert {e["n"] for e in events} >= set(numbers)
    by_key: dict[str, list[int]] = defaultdict(list)
    for event in events:
        by_key[event["key"]].append(event["n"])
    for key, seen in by_key.items():
        first_seen = list(dict.fromkeys(seen))  # a redelivery repeats; order must hold
        assert first_seen == sorted(first_seen), f"key {key} out of order"


def assert_metrics_are_labelled_per_outbox(port: int, databases: set[str]) -> None:
    """One family per metric, a sample per outbox, parseable by Prometheus's own parser."""
    status, text = http_get(port, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    delivered = [
        sample
        for sample in families["outbox_relay_messages"].samples
        if sample.name == "outbox_relay_messages_total"
    ]
    outboxes = {(s.labels["database"], s.labels["schema"]) for s in delivered}
    assert outboxes == {(db, schema) for db in databases for schema in SCHEMAS}
    assert sum(s.value for s in delivered) == 400


def readiness_once_outboxes_ready(port: int, count: int) -> tuple[int, dict]:
    """/readyz once ``count`` outboxes are ready (a database stops counting as answering
    30 s after its last answer)."""
    deadline = time.monotonic() + 60
    while True:
        status, body = http_get(port, "/readyz")
        ready = orjson.loads(body)
        if ready["outboxes_ready"] == count or time.monotonic() > deadline:
            return status, ready
        time.sleep(1)


def test_one_relay_drains_two_servers_with_two_schemas_each_and_survives_one_going_down(
    db_dsn, second_server, kafka, relays
):
    other_dsn = second_server.create_database("tenants")
    migrate(db_dsn, *SCHEMAS)
    migrate(other_dsn, *SCHEMAS)
    topic = kafka.new_topic()
    port = free_port()
    relay = relays(
        "--dsn",
        db_dsn,
        "--dsn",
        other_dsn,
        "--schema",
        "tenant_a",
        "--schema",
        "tenant_b",
        "--kafka-bootstrap",
        kafka.bootstrap,
        "--metrics-port",
        str(port),
        *FAST,
    )
    outboxes = {
        f"{dsn_label}/{schema}": (dsn, schema)
        for dsn_label, dsn in (("first", db_dsn), ("second", other_dsn))
        for schema in SCHEMAS
    }
    for label, (dsn, schema) in outboxes.items():
        write(dsn, schema, topic, label, range(100))
    got = received_by_outbox(kafka, topic, 400)
    for label in outboxes:
        assert_complete_and_in_key_order(got[label], range(100))

    assert_metrics_are_labelled_per_outbox(port, {"tenants", conninfo_to_dict(db_dsn)["dbname"]})

    second_server.stop()
    for schema in SCHEMAS:
        write(db_dsn, schema, topic, f"first/{schema}", range(100, 150))
    got = received_by_outbox(kafka, topic, 100)
    for schema in SCHEMAS:
        assert {e["n"] for e in got[f"first/{schema}"]} >= set(range(100, 150))
    status, ready = readiness_once_outboxes_ready(port, 2)
    assert status == 200, ready
    first_db = conninfo_to_dict(db_dsn)["dbname"]
    assert ready["outbox"][f"{first_db}/tenant_a"] == "ok"
    assert ready["outbox"]["tenants/tenant_b"] == "database: no recent answer"

    second_server.start()
    for schema in SCHEMAS:
        write(other_dsn, schema, topic, f"second/{schema}", range(100, 150))
    got = received_by_outbox(kafka, topic, 100)
    for schema in SCHEMAS:
        assert {e["n"] for e in got[f"second/{schema}"]} >= set(range(100, 150))
    assert relay.terminate() == 0
    assert "Traceback" not in relay.output()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["poll", "cdc"])
def test_a_schema_pattern_picks_up_a_tenant_migrated_later_and_lets_a_dropped_one_go(
    db_dsn, kafka, relays, mode
):
    migrate(db_dsn, "tenant_a")
    topic = kafka.new_topic()
    relay = relays(
        "--mode",
        mode,
        "--dsn",
        db_dsn,
        "--schema-pattern",
        "tenant\\_%",
        "--discover-every",
        "1s",
        "--kafka-bootstrap",
        kafka.bootstrap,
        "--metrics-port",
        "0",
        *FAST,
    )
    write(db_dsn, "tenant_a", topic, "a", range(20))
    assert len(received_by_outbox(kafka, topic, 20)["a"]) == 20

    migrate(db_dsn, "tenant_b")  # a tenant created while the relay runs
    started = time.monotonic()
    write(db_dsn, "tenant_b", topic, "b", range(20))
    got = received_by_outbox(kafka, topic, 20)
    assert {e["n"] for e in got["b"]} == set(range(20))
    assert time.monotonic() - started < 30

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA tenant_a CASCADE")
    wait_for(lambda: "no longer matches or exists" in relay.output(), 30, "tenant_a let go")
    time.sleep(3)  # errors would pile up here if it were still drained
    after_drop = relay.output().split("no longer matches or exists", 1)[1]
    assert after_drop.count("WARNING") + after_drop.count("ERROR") <= 3, after_drop
    write(db_dsn, "tenant_b", topic, "b", range(20, 30))
    assert {e["n"] for e in received_by_outbox(kafka, topic, 10)["b"]} == set(range(20, 30))
    assert relay.terminate() == 0
    assert "Traceback" not in relay.output()


def test_cdc_mode_streams_every_outbox_of_a_database(db_dsn, kafka, relays):
    migrate(db_dsn, *SCHEMAS)
    topic = kafka.new_topic()
    relay = relays(
        "--mode",
        "cdc",
        "--dsn",
        db_dsn,
        "--schema",
        "tenant_a",
        "--schema",
        "tenant_b",
        "--kafka-bootstrap",
        kafka.bootstrap,
        "--metrics-port",
        "0",
        *FAST,
    )
    for schema in SCHEMAS:
        write(db_dsn, schema, topic, schema, range(50))
    got = received_by_outbox(kafka, topic, 100)
    for schema in SCHEMAS:
        assert_complete_and_in_key_order(got[schema], range(50))
    with psycopg.connect(db_dsn) as conn:
        # One WAL sender streams one slot whose publication covers both tables.
        senders = conn.execute(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'outbox-relay%'"
        ).fetchone()
        published = conn.execute(
            "SELECT schemaname FROM pg_publication_tables WHERE pubname = 'outbox_relay__shared'"
            " ORDER BY 1"
        ).fetchall()
    assert senders == (1,)
    assert [p[0] for p in published] == list(SCHEMAS)
    # `status` counts each outbox's own messages, not the slot's (20 and 50).
    write(db_dsn, "tenant_b", topic, "tenant_b", range(50, 80))
    received_by_outbox(kafka, topic, 30)
    wait_for(lambda: published_counts(db_dsn) == {"tenant_a": 50, "tenant_b": 80}, 15,
             "each outbox's relays row to count its own messages")
    assert relay.terminate() == 0
    with psycopg.connect(db_dsn) as conn:
        slots = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
            " ORDER BY 1"
        ).fetchall()
    assert [s[0] for s in slots] == ["outbox_relay__shared"]


def test_an_outbox_left_out_of_a_shared_slot_for_a_while_catches_up_alone(
    db_dsn, kafka, relays
):
    migrate(db_dsn, *SCHEMAS)
    topic = kafka.new_topic()
    cdc = ["--mode", "cdc", "--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap,
           "--metrics-port", "0", *FAST]
    both = relays(*cdc, "--schema", "tenant_a", "--schema", "tenant_b")
    for schema in SCHEMAS:
        write(db_dsn, schema, topic, schema, range(10))
    assert len(received_by_outbox(kafka, topic, 20)) == 2
    assert both.terminate() == 0
    only_a = relays(*cdc, "--schema", "tenant_a", "--schema", "tenant_c")
    migrate(db_dsn, "tenant_c")
    write(db_dsn, "tenant_a", topic, "tenant_a", range(10, 20))
    write(db_dsn, "tenant_b", topic, "tenant_b", range(10, 20))  # nobody streams b now
    assert {e["n"] for e in received_by_outbox(kafka, topic, 10)["tenant_a"]} == set(range(10, 20))
    assert only_a.terminate() == 0  # the slot has moved past b's last position
    again = relays(*cdc, "--schema", "tenant_a", "--schema", "tenant_b")
    write(db_dsn, "tenant_b", topic, "tenant_b", range(20, 30))
    got: dict[str, set[int]] = defaultdict(set)
    deadline = time.monotonic() + 60
    while not set(range(10, 30)) <= got["tenant_b"] and time.monotonic() < deadline:
        for outbox, events in received_by_outbox(kafka, topic, 1000, timeout=3).items():
            got[outbox] |= {e["n"] for e in events}
    assert got["tenant_b"] >= set(range(10, 30))  # b's gap republished from its table
    assert "tenant_a" not in got  # a was not republished: the slot was not made again
    assert "republishing its rows newer than that" in again.output()
    assert "dropped replication slot" not in again.output()
    assert again.terminate() == 0


def published_counts(dsn: str) -> dict[str, int]:
    result = outbox_relay("status", "--json", "--dsn", dsn, "--schema", SCHEMAS[0],
                          "--schema", SCHEMAS[1])
    assert result.returncode == 0, result.stderr
    return {
        outbox["schema"]: sum(r["published"] for r in outbox["relays"] if r["alive"])
        for outbox in orjson.loads(result.stdout)["outboxes"]
    }


def pending(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.messages").format(sql.Identifier(schema))
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def test_a_tenant_with_a_backlog_does_not_starve_one_with_ten_messages(db_dsn, kafka, relays):
    migrate(db_dsn, *SCHEMAS)
    busy_topic, quiet_topic = kafka.new_topic(), kafka.new_topic()
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "INSERT INTO tenant_a.messages (topic, key, payload) "
            "SELECT %s, 'k' || (i %% 50), jsonb_build_object('outbox', 'a', 'n', i) "
            "FROM generate_series(1, 60000) i",
            (busy_topic,),
        )
    relay = relays(
        "--dsn",
        db_dsn,
        "--schema",
        "tenant_a",
        "--schema",
        "tenant_b",
        "--batch-size",
        "500",
        "--max-db-connections",
        "5",  # one claim connection for both outboxes
        "--kafka-bootstrap",
        kafka.bootstrap,
        "--metrics-port",
        "0",
        *FAST,
    )
    wait_for(lambda: pending(db_dsn, "tenant_a") < 59_000, 30, "the backlog to start draining")
    write(db_dsn, "tenant_b", quiet_topic, "b", range(10))
    # A row is deleted once the broker confirmed it: the backlog left then, not after a
    # consumer (which takes its time to start) has read the ten.
    wait_for(lambda: pending(db_dsn, "tenant_b") == 0, 30, "the quiet tenant's ten confirmed")
    backlog_left = pending(db_dsn, "tenant_a")
    got = received_by_outbox(kafka, quiet_topic, 10)
    assert {e["n"] for e in got["b"]} == set(range(10))
    assert backlog_left > 0, "the quiet tenant's ten came only after the whole backlog"
    assert relay.terminate() == 0


def test_an_outbox_not_migrated_yet_waits_without_stopping_the_others(db_dsn, kafka, relays):
    migrate(db_dsn, "tenant_a")
    topic = kafka.new_topic()
    port = free_port()
    relay = relays(
        "--dsn",
        db_dsn,
        "--schema",
        "tenant_a",
        "--schema",
        "tenant_b",
        "--kafka-bootstrap",
        kafka.bootstrap,
        "--metrics-port",
        str(port),
        *FAST,
    )
    write(db_dsn, "tenant_a", topic, "a", range(10))
    assert {e["n"] for e in received_by_outbox(kafka, topic, 10)["a"]} == set(range(10))
    status, body = http_get(port, "/readyz")
    ready = orjson.loads(body)
    first_db = conninfo_to_dict(db_dsn)["dbname"]
    assert status == 200 and ready["outboxes_ready"] == 1, body
    waiting = ready["outbox"][f"{first_db}/tenant_b"]
    assert "no outbox schema 'tenant_b'" in waiting, body
    assert "`outbox-relay migrate --schema tenant_b`" in waiting, body  # a command to copy

    migrate(db_dsn, "tenant_b")  # the tenant's migration lands while the relay runs
    write(db_dsn, "tenant_b", topic, "b", range(10))
    assert {e["n"] for e in received_by_outbox(kafka, topic, 10)["b"]} == set(range(10))
    assert relay.terminate() == 0
    log = relay.output()
    assert log.count("cannot drain this outbox") == 1, log  # said once, not every retry
    assert "Traceback" not in log
