"""Two relays share a database's CDC slot but select different outboxes: the one that
waits as a standby says loudly which of its outboxes nobody streams, and takes them over
with the slot when the leader stops (docs/multi-tenant.md)."""

from __future__ import annotations

import time

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

pytestmark = pytest.mark.e2e
CDC_FAST = ["--mode", "cdc", "--cdc-takeover-ttl", "2s", "--cdc-heartbeat", "1s",
            "--publish-timeout", "1s", "--shutdown-timeout", "10s", "--retry-base", "100ms",
            "--retry-cap", "1s", "--log-level", "info"]
LEADS = "leads CDC on slot"
NOT_COVERED = "is not streamed by the relay that leads slot"


@pytest.fixture
def kafka(kafka_bootstrap):
    harness = KafkaHarness(kafka_bootstrap)
    yield harness
    harness.cleanup()


def write(dsn: str, schema: str, topic: str, numbers: range) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in numbers:
            conn.execute(
                sql.SQL("SELECT {}.enqueue(%s, %s, %s::jsonb)").format(sql.Identifier(schema)),
                (topic, f"k{n % 5}", orjson.dumps({"outbox": schema, "n": n}).decode()),
            )


def rows(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.messages").format(sql.Identifier(schema))
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def numbers_of(kafka: KafkaHarness, topic: str, count: int, timeout: float) -> dict[str, set]:
    got: dict[str, set] = {}
    for message in kafka.read(topic, count, timeout=timeout):
        event = orjson.loads(message.value or b"{}")
        got.setdefault(event["outbox"], set()).add(event["n"])
    return got


def readiness_once(port: int, wanted: dict[str, str], timeout: float) -> tuple[int, dict]:
    """/readyz once each outbox's state holds its ``wanted`` words (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_get(port, "/readyz")
        ready = orjson.loads(body)
        states = ready["outbox"]
        if all(words in states.get(outbox, "") for outbox, words in wanted.items()):
            return status, ready
        if time.monotonic() > deadline:
            return status, ready
        time.sleep(0.3)


def not_streamed(port: int, schema: str) -> float:
    _, text = http_get(port, "/metrics")
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "outbox_relay_cdc_not_streamed")
    return next(s.value for s in family.samples if s.labels["schema"] == schema)


def test_a_standby_names_the_outbox_the_leader_of_the_slot_does_not_stream(
    db_dsn, kafka, tmp_path
):
    for schema in ("tenant_a", "tenant_b", "tenant_c"):
        assert outbox_relay("migrate", "--dsn", db_dsn, "--schema", schema).returncode == 0
    topic = kafka.new_topic()
    common = ["--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *CDC_FAST]
    first = RelayProcess([*common, "--schema", "tenant_a", "--schema", "tenant_b",
                          "--metrics-port", "0"],
                         tmp_path / "ab.log")
    port = free_port()
    second = None
    try:
        first.wait_for_log(LEADS, 30)
        second = RelayProcess([*common, "--schema", "tenant_a", "--schema", "tenant_c",
                               "--metrics-port", str(port)],
                              tmp_path / "ac.log")
        second.wait_for_log("standby", 30)
        write(db_dsn, "tenant_a", topic, range(10))
        write(db_dsn, "tenant_c", topic, range(10))
        got = numbers_of(kafka, topic, 10, timeout=30)
        assert got.get("tenant_a") == set(range(10)) and "tenant_c" not in got

        second.wait_for_log(NOT_COVERED, 15)
        database = conninfo_to_dict(db_dsn)["dbname"]
        status, ready = readiness_once(
            port, {f"{database}/tenant_c": "not streamed", f"{database}/tenant_a": "ok"}, 30)
        reason = ready["outbox"][f"{database}/tenant_c"]
        leader = f":{first.pid}"  # relays are named host:pid
        assert leader in reason and "outbox_relay__shared" in reason, ready
        assert ready["outbox"][f"{database}/tenant_a"] == "ok", ready
        assert status == 200 and ready["outboxes_ready"] == 1, ready  # a is served
        assert not_streamed(port, "tenant_c") == 1.0
        line = next(x for x in second.output().splitlines() if NOT_COVERED in x)
        assert "WARNING" in line and "tenant_c" in line and leader in line, line
        assert "outbox_relay__shared" in line, line
        time.sleep(3)  # several standby rounds: said once, not every round
        assert second.output().count(NOT_COVERED) == 1, second.output()
        assert rows(db_dsn, "tenant_c") == 10  # nobody streams c: its rows stay
        doctor = outbox_relay("doctor", "--dsn", db_dsn, "--schema", "tenant_a", "--schema",
                              "tenant_c", "--mode", "cdc")
        assert doctor.returncode == 1, doctor.stdout
        blocks = dict(block.split(" ==\n", 1) for block in doctor.stdout.split("== ")[1:])
        assert "ok   slot lead: relay" in blocks[f"{database}/tenant_a"], doctor.stdout
        assert "FAIL slot lead: the relay leading slot outbox_relay__shared" in (
            blocks[f"{database}/tenant_c"]), doctor.stdout

        assert first.terminate() == 0  # the leader stops: the standby takes the slot over
        second.wait_for_log(LEADS, 30)
        write(db_dsn, "tenant_c", topic, range(10, 20))
        delivered: set[int] = set()
        deadline = time.monotonic() + 60
        while delivered < set(range(20)) and time.monotonic() < deadline:
            delivered |= numbers_of(kafka, topic, 1000, timeout=3).get("tenant_c", set())
        # Nothing of c's table is lost (rows written while it joins may come twice).
        assert delivered == set(range(20)), delivered
        _, ready = readiness_once(port, {f"{database}/tenant_c": "ok"}, 15)
        assert ready["outbox"][f"{database}/tenant_c"] == "ok", ready
        assert not_streamed(port, "tenant_c") == 0.0
        assert second.terminate() == 0
        assert "Traceback" not in second.output()
    finally:
        first.stop()
        if second is not None:
            second.stop()
