"""``outbox-relay run --mode cdc`` as a user runs it: two processes, the leader SIGKILLed
mid-stream, the standby takes over, and nothing is lost on the broker."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import orjson
import psycopg
import pytest

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


def write_rows(dsn, topic, count, done):
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(count):
            with conn.transaction():
                row = conn.execute("SELECT outbox.enqueue(%s, %s, %s::jsonb)",
                                   (topic, f"k{n % 5}", f'{{"n": {n}}}')).fetchone()
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
    ids = [r.message_id for r in received]
    assert set(written) <= set(ids)  # nothing lost
    assert len(ids) - len(written) < 400  # duplicates bounded by what was in flight
    firsts = list(dict.fromkeys(ids))
    by_key = defaultdict(list)
    order = {ident: n for n, ident in enumerate(written)}
    for ident in firsts:
        by_key[received[ids.index(ident)].key].append(order[ident])
    for positions in by_key.values():  # per key, first deliveries in commit order
        assert positions == sorted(positions)


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
