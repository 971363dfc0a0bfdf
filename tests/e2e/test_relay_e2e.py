"""The installed ``outbox-relay`` command against real PostgreSQL, Kafka protocol and
RabbitMQ: what a user runs, stopped with real signals."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import orjson
import psycopg
import pytest

from tests.support.cli import RelayProcess, outbox_relay
from tests.support.kafka_harness import KafkaHarness
from tests.support.rabbitmq_harness import RabbitMQHarness
from tests.support.written_log import gone_ids, record_writes, sent_and_pending, written_rows

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


@pytest.fixture
def kafka(kafka_bootstrap):
    harness = KafkaHarness(kafka_bootstrap)
    yield harness
    harness.cleanup()


@pytest.fixture
def rabbit(amqp_url, unique_name):
    harness = RabbitMQHarness(amqp_url, unique_name("outbox_ex"))
    yield harness
    harness.cleanup()


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


def migrate(dsn):
    result = outbox_relay("migrate", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    record_writes(dsn)  # the relay deletes what it delivered: judge against a log


def write_sample(dsn, topic, count=200):
    """Rows from SQL, as any language would write them: JSON, binary, NULL key, headers."""
    with psycopg.connect(dsn) as conn:
        for i in range(count):
            conn.execute(
                "SELECT outbox.enqueue(%s, %s, %s::jsonb, %s::jsonb)",
                (
                    topic,
                    f"k{i % 10}",
                    orjson.dumps({"n": i, "text": "é"}).decode(),
                    orjson.dumps({"traceparent": f"00-{i:032x}-{i:016x}-01"}).decode(),
                ),
            )
        conn.execute("SELECT outbox.enqueue_binary(%s, NULL, %s)", (topic, b"\x00\xffbin"))
        return conn.execute(
            "SELECT id::text, key, coalesce(payload::text, ''), headers FROM outbox.messages "
            "ORDER BY seq"
        ).fetchall()


def dead_letter_count(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM outbox.dead_letters").fetchone()[0]


def wait_until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ids_by_key(pairs):
    grouped = defaultdict(list)
    for message_id, key in pairs:
        grouped[key].append(message_id)
    return grouped


def assert_same_messages(rows, received):
    """Each row exactly once, each key in outbox order (claim lanes interleave keys)."""
    assert sorted(r.message_id for r in received) == sorted(row[0] for row in rows)
    assert ids_by_key((r.message_id, r.key) for r in received) == ids_by_key(
        (row[0], row[1]) for row in rows
    )
    by_id = {r.message_id: r for r in received}
    for row in rows:
        got = by_id[row[0]]
        assert got.key == row[1]
        if row[2]:
            assert got.value == row[2].encode()  # jsonb's own text, byte for byte
            assert got.headers["traceparent"] == row[3]["traceparent"]
        else:
            assert got.value == b"\x00\xffbin"


def test_end_to_end_to_kafka(db_dsn, kafka, relays):
    migrate(db_dsn)
    topic = kafka.new_topic()
    rows = write_sample(db_dsn, topic)
    relay = relays("--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *FAST)
    received = kafka.read(topic, len(rows), timeout=60)
    assert_same_messages(rows, received)
    wait_until(lambda: sent_and_pending(db_dsn) == (len(rows), 0), 15, "rows marked sent")
    assert relay.terminate() == 0


def test_end_to_end_to_rabbitmq(db_dsn, rabbit, relays):
    migrate(db_dsn)
    topic = rabbit.new_topic()
    rows = write_sample(db_dsn, topic)
    config = rabbit.configure(__import__("relay.config").config.RelayConfig(dsn=db_dsn))
    relay = relays(
        "--dsn",
        db_dsn,
        "--connector",
        "rabbitmq",
        "--amqp-url",
        config.connector_options["url"],
        "--amqp-exchange",
        config.connector_options["exchange"],
        *FAST,
    )
    received = rabbit.read(topic, len(rows), timeout=60)
    assert_same_messages(rows, received)
    assert received[0].content_type == "application/json"
    wait_until(lambda: sent_and_pending(db_dsn) == (len(rows), 0), 15, "rows marked sent")
    assert relay.terminate() == 0


def test_unroutable_rabbitmq_message_becomes_a_dead_letter_and_others_flow(db_dsn, rabbit, relays):
    migrate(db_dsn)
    topic, nowhere = rabbit.new_topic(), rabbit.unroutable_topic()
    with psycopg.connect(db_dsn) as conn:
        conn.execute("SELECT outbox.enqueue(%s, 'lonely', '{}')", (nowhere,))
        for i in range(20):
            conn.execute("SELECT outbox.enqueue(%s, %s, '{}')", (topic, f"k{i % 4}"))
    config = rabbit.configure(__import__("relay.config").config.RelayConfig(dsn=db_dsn))
    relay = relays(
        "--dsn",
        db_dsn,
        "--connector",
        "rabbitmq",
        "--amqp-url",
        config.connector_options["url"],
        "--amqp-exchange",
        config.connector_options["exchange"],
        *FAST,
    )
    assert len(rabbit.read(topic, 20, timeout=30)) == 20
    wait_until(lambda: sent_and_pending(db_dsn) == (20, 0), 15, "every other row sent")
    wait_until(lambda: dead_letter_count(db_dsn) == 1, 15, "the unroutable row parked")
    with psycopg.connect(db_dsn) as conn:
        parked = conn.execute("SELECT key, last_error FROM outbox.dead_letters").fetchone()
    assert parked[0] == "lonely"
    assert "NO_ROUTE" in parked[1] or "312" in parked[1]
    status = outbox_relay("status", "--dsn", db_dsn)
    assert "parked messages:     1" in status.stdout
    assert relay.proc.poll() is None  # still running
    assert relay.terminate() == 0


def test_sigterm_drains_in_flight_and_releases_leases(db_dsn, kafka, relays):
    migrate(db_dsn)
    topic = kafka.new_topic()
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload) "
            "SELECT %s, 'k' || (i %% 50), jsonb_build_object('n', i) "
            "FROM generate_series(1, 30000) i",
            (topic,),
        )
    relay = relays(
        "--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, "--batch-size", "200", *FAST
    )
    wait_until(lambda: sent_and_pending(db_dsn)[0] > 500, 30, "the drain to start")
    assert relay.terminate(timeout=20) == 0
    sent, _ = sent_and_pending(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        leased = conn.execute(
            "SELECT count(*) FROM outbox.bucket_leases WHERE relay_id IS NOT NULL"
        ).fetchone()[0]
        relay_rows = conn.execute("SELECT count(*) FROM outbox.relays").fetchone()[0]
    sent_ids = gone_ids(db_dsn)
    assert leased == 0 and relay_rows == 0
    received = {r.message_id for r in kafka.read(topic, sent, timeout=60)}
    assert sent_ids <= received  # nothing marked sent that the broker did not confirm
    assert "relay stopped" in relay.output()


def test_three_relays_one_killed_mid_drain_lose_nothing_and_keep_key_order(
    db_dsn, kafka, relays, record_property
):
    migrate(db_dsn)
    topic = kafka.new_topic(partitions=3)
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload) "
            "SELECT %s, 'k' || (i %% 40), jsonb_build_object('n', i) "
            "FROM generate_series(1, 8000) i",
            (topic,),
        )
    stop_writing = threading.Event()
    writer = threading.Thread(target=keep_writing, args=(db_dsn, topic, stop_writing))
    writer.start()
    try:
        args = ["--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, "--batch-size", "100", *FAST]
        group = [relays(*args) for _ in range(3)]
        wait_until(lambda: sent_and_pending(db_dsn)[0] > 3000, 60, "the drain to start")
        group[1].kill()  # SIGKILL mid-drain: its in-flight batch is neither marked nor released
        time.sleep(2)
    finally:
        stop_writing.set()
        writer.join(30)
    wait_until(lambda: sent_and_pending(db_dsn)[1] == 0, 90, "the survivors to drain everything")
    written = written_rows(db_dsn)
    received = read_all_ids(kafka, topic, {row[0] for row in written})
    order = {row[0]: (row[1], row[2]) for row in written}
    missing = {row[0] for row in written} - {r.message_id for r in received}
    assert not missing, f"{len(missing)} messages lost"
    assert_first_occurrences_follow_key_order(received, order)
    record_property("duplicates", len(received) - len(written))
    for survivor in (group[0], group[2]):
        assert survivor.terminate() == 0


def keep_writing(dsn, topic, stop):
    with psycopg.connect(dsn) as conn:
        n = 0
        while not stop.is_set():
            with conn.transaction():
                for _ in range(20):
                    conn.execute(
                        "SELECT outbox.enqueue(%s, %s, %s::jsonb)",
                        (topic, f"k{n % 40}", orjson.dumps({"w": n}).decode()),
                    )
                    n += 1
            time.sleep(0.02)


def read_all_ids(kafka, topic, expected_ids):
    received = []
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    while not expected_ids <= seen and time.monotonic() < deadline:
        batch = kafka.read(topic, len(expected_ids) - len(seen), timeout=10)
        received.extend(batch)
        seen.update(r.message_id for r in batch)
    return received


def assert_first_occurrences_follow_key_order(received, order):
    firsts: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for message in received:
        if message.message_id in seen:
            continue
        seen.add(message.message_id)
        key, seq = order[message.message_id]
        firsts[key].append(seq)
    for key, seqs in firsts.items():
        assert seqs == sorted(seqs), f"key {key} reordered"
