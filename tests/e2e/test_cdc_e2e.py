"""``outbox-relay run --mode cdc`` as a user runs it: two processes, the leader SIGKILLed
mid-stream, the standby takes over, and nothing is lost on the broker."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import orjson
import psycopg
import pytest
from psycopg import sql

from tests.support.cli import RelayProcess, outbox_relay
from tests.support.kafka_harness import KafkaHarness

pytestmark = pytest.mark.e2e
CDC_FAST = ["--mode", "cdc", "--cdc-takeover-ttl", "2s", "--cdc-heartbeat", "1s",
            "--publish-timeout", "1s", "--shutdown-timeout", "10s", "--log-level", "info",
            "--metrics-port", "0"]
LEADS = "leads CDC on slot"


@pytest.fixture
def kafka(private_tansu):
    harness = KafkaHarness(private_tansu.bootstrap, private_tansu)
    yield harness
    harness.cleanup()


def write_rows(dsn, topic, count, done, schema="outbox"):
    ids = []
    enqueue = sql.SQL("SELECT {}.enqueue(%s, %s, %s::jsonb)").format(sql.Identifier(schema))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(count):
            with conn.transaction():
                row = conn.execute(enqueue, (topic, f"k{n % 5}", f'{{"n": {n}}}')).fetchone()
                ids.append(str(row[0]))
            time.sleep(0.005)  # a steady stream, so the kill lands mid-flight
    done.extend(ids)


def wait_for_leader(first, second, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for leader, standby in ((first, second), (second, first)):
            if LEADS in leader.output():
                return leader, standby
        time.sleep(0.05)
    raise AssertionError(f"no relay leads CDC:\n{first.output()}\n{second.output()}")


def test_sigkill_of_the_streaming_relay_loses_nothing(db_dsn, kafka, tmp_path):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    topic = kafka.new_topic()
    args = ["--dsn", db_dsn, "--connector", "kafka", "--kafka-bootstrap", kafka.bootstrap,
            *CDC_FAST]
    first = RelayProcess(args, tmp_path / "first.log")
    second = RelayProcess(args, tmp_path / "second.log")
    try:
        leader, standby = wait_for_leader(first, second, 30)
        time.sleep(1)
        assert LEADS not in standby.output()  # exactly one streams; the other waits
        written: list[str] = []
        writer = threading.Thread(target=write_rows, args=(db_dsn, topic, 400, written))
        writer.start()
        time.sleep(0.8)
        leader.kill()  # SIGKILL: no drain, no final confirmation, no unlock
        killed_at = time.monotonic()
        standby.wait_for_log(LEADS, 15)
        assert time.monotonic() - killed_at < 5
        writer.join(60)
        received = kafka.read(topic, len(written), timeout=60)
        received += kafka.read(topic, 10_000, timeout=3)  # and any duplicates
        assert standby.terminate() == 0
    finally:
        first.stop()
        second.stop()
    assert_complete_in_commit_order(received, written, in_flight=400)


def assert_complete_in_commit_order(received, written, *, in_flight):
    ids = [r.message_id for r in received]
    assert set(written) <= set(ids)  # nothing lost
    assert len(ids) - len(written) < in_flight  # duplicates bounded by what was in flight
    firsts = list(dict.fromkeys(ids))
    by_key = defaultdict(list)
    order = {ident: n for n, ident in enumerate(written)}
    for ident in firsts:
        by_key[received[ids.index(ident)].key].append(order[ident])
    for positions in by_key.values():  # per key, first deliveries in commit order
        assert positions == sorted(positions)


def test_sigkill_of_the_relay_streaming_two_outboxes_through_one_slot_loses_nothing(
    db_dsn, kafka, tmp_path
):
    schemas = ("tenant_a", "tenant_b")
    for schema in schemas:
        assert outbox_relay("migrate", "--dsn", db_dsn, "--schema", schema).returncode == 0
    topics = {schema: kafka.new_topic() for schema in schemas}
    args = ["--dsn", db_dsn, "--schema", schemas[0], "--schema", schemas[1],
            "--connector", "kafka", "--kafka-bootstrap", kafka.bootstrap, *CDC_FAST]
    first = RelayProcess(args, tmp_path / "first.log")
    second = RelayProcess(args, tmp_path / "second.log")
    written: dict[str, list[str]] = {schema: [] for schema in schemas}
    try:
        leader, standby = wait_for_leader(first, second, 30)
        writers = [
            threading.Thread(target=write_rows,
                             args=(db_dsn, topics[schema], 300, written[schema], schema))
            for schema in schemas
        ]
        for writer in writers:
            writer.start()
        time.sleep(0.8)
        leader.kill()  # SIGKILL mid-stream: both outboxes' batches in flight
        standby.wait_for_log(LEADS, 15)
        for writer in writers:
            writer.join(60)
        for schema in schemas:
            received = kafka.read(topics[schema], len(written[schema]), timeout=60)
            received += kafka.read(topics[schema], 10_000, timeout=3)
            assert_complete_in_commit_order(received, written[schema], in_flight=300)
        with psycopg.connect(db_dsn) as conn:
            slots = conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()
        assert slots == [("outbox_relay__shared",)]
        assert standby.terminate() == 0
        assert "Traceback" not in standby.output()
    finally:
        first.stop()
        second.stop()


def test_doctor_and_status_explain_cdc(db_dsn, kafka, tmp_path):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    doctor = outbox_relay("doctor", "--dsn", db_dsn, "--mode", "cdc")
    assert doctor.returncode == 0, doctor.stdout
    assert "ok   wal_level" in doctor.stdout
    relay = RelayProcess(
        ["--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *CDC_FAST], tmp_path / "r.log"
    )
    try:
        relay.wait_for_log(LEADS, 30)
        status = outbox_relay("status", "--dsn", db_dsn, "--json")
        text = outbox_relay("status", "--dsn", db_dsn)
        assert relay.terminate() == 0
    finally:
        relay.stop()
    cdc = orjson.loads(status.stdout)["cdc"]
    assert cdc["exists"] and isinstance(cdc["lag_bytes"], int)
    assert "cdc slot:            outbox_relay_outbox" in text.stdout
    unknown_mode = outbox_relay("doctor", "--dsn", db_dsn, "--mode", "stream")
    assert unknown_mode.returncode == 2 and "unknown" in unknown_mode.stderr
