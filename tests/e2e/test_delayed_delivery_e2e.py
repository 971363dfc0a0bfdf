"""Delayed delivery through the installed ``outbox-relay`` command, read back with a plain
Kafka consumer (``assign()``, no group): a message written with ``available_at`` in the
future is published when it becomes due (the producer's record timestamp says when),
not at commit and not at the fallback poll; it holds back nothing of its key while it
waits; once due it takes its place in the key's order; a kill -9 while it waits loses
nothing; ``status`` shows it."""

from __future__ import annotations

import time
from datetime import datetime

import orjson
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from tests.support.cli import RelayProcess, outbox_relay
from tests.support.kafka_harness import KafkaHarness

pytestmark = pytest.mark.e2e

POLL = ["--connector", "kafka", "--lease-ttl", "3s", "--publish-timeout", "1s",
        "--shutdown-timeout", "10s", "--metrics-port", "0", "--log-level", "debug"]
CDC = ["--connector", "kafka", "--mode", "cdc", "--cdc-takeover-ttl", "2s",
       "--cdc-heartbeat", "1s", "--publish-timeout", "1s", "--shutdown-timeout", "10s",
       "--metrics-port", "0", "--log-level", "info"]
# The promise: published within a second of its due time (by the producer's clock,
# which is the database's clock here: one machine).
DUE_WITHIN = 1.0
CLOCK_GRAIN = 0.002  # Kafka timestamps are whole milliseconds


@pytest.fixture
def kafka(kafka_bootstrap):
    harness = KafkaHarness(kafka_bootstrap)
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


class PlainConsumer:
    """A plain confluent-kafka consumer on one partition, read from the start."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                   "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def read(self, count: int, timeout: float) -> list[tuple[str, dict, float]]:
        """(key, payload, publish time in epoch seconds) of up to ``count`` records."""
        got: list[tuple[str, dict, float]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            record = self._consumer.poll(0.2)
            if record is None:
                continue
            assert record.error() is None, record.error()
            _kind, millis = record.timestamp()
            got.append((record.key().decode(), orjson.loads(record.value()), millis / 1000))
        return got

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture
def consume(kafka):
    opened: list[PlainConsumer] = []

    def open_topic(topic: str) -> PlainConsumer:
        opened.append(PlainConsumer(kafka.bootstrap, topic))
        return opened[-1]

    yield open_topic
    for consumer in opened:
        consumer.close()


def migrate(dsn):
    result = outbox_relay("migrate", "--dsn", dsn)
    assert result.returncode == 0, result.stderr


def write(dsn, topic, key, payload, delay=None) -> float:
    """Insert a row as a writer would (``available_at`` set directly when delayed); its
    due time in epoch seconds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        due = conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at) "
            "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) "
            "RETURNING extract(epoch FROM available_at)::float8",
            (topic, key, orjson.dumps(payload).decode(), delay or 0),
        ).fetchone()[0]
    return float(due)


def scalar(dsn, statement, params=()):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(statement, params).fetchone()[0]


def in_outbox(dsn, payload):
    return scalar(dsn, "SELECT count(*) FROM outbox.messages WHERE payload::jsonb = %s",
                  (orjson.dumps(payload).decode(),)) == 1


def wait_until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def assert_on_time(published: float, due: float) -> None:
    assert published >= due - CLOCK_GRAIN, f"published {due - published:.3f}s before due"
    assert published - due <= DUE_WITHIN, f"published {published - due:.3f}s after due"


def test_a_polling_relay_publishes_a_delayed_message_when_due_not_at_the_fallback_poll(
    db_dsn, kafka, relays, consume
):
    migrate(db_dsn)
    topic = kafka.new_topic()
    consumer = consume(topic)
    relays("--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, "--poll-interval", "30s",
           *POLL)
    write(db_dsn, topic, "warm-up", {"n": 0})
    assert len(consumer.read(1, 30)) == 1  # running, and its lanes now wait 30 s
    due = write(db_dsn, topic, "k", {"n": 1}, delay=3)
    [(key, payload, published)] = consumer.read(1, 3 + DUE_WITHIN + 5)
    assert (key, payload) == ("k", {"n": 1})
    assert_on_time(published, due)


def test_a_delayed_message_holds_nothing_back_and_takes_its_place_when_due(
    db_dsn, kafka, relays, consume
):
    """Polling. While it waits, its key's later messages go on; once due it goes out
    after every message of its key committed before that moment and before every one
    committed after, even while the key is held (here behind a dead letter)."""
    migrate(db_dsn)
    topic = kafka.new_topic()
    consumer = consume(topic)
    # The default poll interval: releasing a key (dead-letters drop) sends no NOTIFY.
    relays("--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap,
           "--max-message-bytes", "2000", *POLL)
    write(db_dsn, topic, "warm-up", {"n": 0})
    assert len(consumer.read(1, 30)) == 1  # running
    due = write(db_dsn, topic, "k", {"d": 1}, delay=2)
    write(db_dsn, topic, "k", {"a": 1})
    [first] = consumer.read(1, 10)
    assert first[1] == {"a": 1} and first[2] < due  # not blocked by the waiting one
    [second] = consumer.read(1, 2 + DUE_WITHIN + 5)
    assert second[1] == {"d": 1}
    assert_on_time(second[2], due)
    write(db_dsn, topic, "k", {"c": 1})

    # The key held behind a dead letter (too large): what it waits for piles up.
    write(db_dsn, topic, "h", {"big": "x" * 3000})
    wait_until(lambda: scalar(db_dsn, "SELECT count(*) FROM outbox.dead_letters") == 1, 15,
               "the oversized message to become a dead letter")
    due = write(db_dsn, topic, "h", {"d": 2}, delay=1.5)
    write(db_dsn, topic, "h", {"a": 2})
    wait_until(lambda: time.time() > due and in_outbox(db_dsn, {"d": 2}), 10,
               "the delayed message to be due and in the outbox")
    write(db_dsn, topic, "h", {"b": 2})
    dropped = outbox_relay("dead-letters", "drop", "--key", "h", "--dsn", db_dsn)
    assert dropped.returncode == 0, dropped.stderr
    rest = consumer.read(4, 15)
    assert [payload for _, payload, _ in rest] == [{"c": 1}, {"a": 2}, {"d": 2}, {"b": 2}]


def test_cdc_publishes_a_delayed_message_when_due_not_at_commit(
    db_dsn, kafka, relays, consume
):
    migrate(db_dsn)
    topic = kafka.new_topic()
    consumer = consume(topic)
    relay = relays("--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *CDC)
    relay.wait_for_log("streaming slot", 30)
    due = write(db_dsn, topic, "k", {"d": 1}, delay=2)
    write(db_dsn, topic, "k", {"a": 1})
    [first] = consumer.read(1, 10)
    assert first[1] == {"a": 1} and first[2] < due  # the stream went on past it
    [second] = consumer.read(1, 2 + DUE_WITHIN + 5)
    assert second[1] == {"d": 1}
    assert_on_time(second[2], due)
    write(db_dsn, topic, "k", {"c": 1})
    assert [p for _, p, _ in consumer.read(1, 10)] == [{"c": 1}]


def test_cdc_kill_9_while_a_delayed_message_waits_loses_nothing(
    db_dsn, kafka, relays, consume
):
    """The slot is confirmed past the delayed insert at once (the message waits in the
    scheduled table, not in the WAL); a relay killed meanwhile and started again
    publishes it when due, once."""
    migrate(db_dsn)
    topic = kafka.new_topic()
    consumer = consume(topic)
    args = ("--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *CDC)
    first = relays(*args)
    first.wait_for_log("streaming slot", 30)
    due = write(db_dsn, topic, "k", {"d": 1}, delay=6)
    write(db_dsn, topic, "k", {"a": 1})
    written_up_to = scalar(db_dsn, "SELECT pg_current_wal_lsn()::text")
    assert [p for _, p, _ in consumer.read(1, 10)] == [{"a": 1}]
    wait_until(lambda: scalar(
        db_dsn, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots",
        (written_up_to,)), 15, "the slot to be confirmed past the delayed insert")
    first.kill()
    assert time.time() < due - 1  # killed while it waits
    second = relays(*args)
    second.wait_for_log("streaming slot", 30)
    [(key, payload, published)] = consumer.read(1, due - time.time() + DUE_WITHIN + 10)
    assert (key, payload) == ("k", {"d": 1})
    assert_on_time(published, due)
    assert consumer.read(1, 2) == []  # once
    assert second.terminate() == 0


def test_status_shows_the_scheduled_messages_and_the_next_due(db_dsn):
    migrate(db_dsn)
    due = [write(db_dsn, "t", f"k{n}", {"n": n}, delay=delay)
           for n, delay in enumerate((3600, 60, 7200))]
    write(db_dsn, "t", "k", {"now": 1})
    as_json = outbox_relay("status", "--dsn", db_dsn, "--json")
    text = outbox_relay("status", "--dsn", db_dsn)
    assert as_json.returncode == 0 and text.returncode == 0, as_json.stderr + text.stderr
    status = orjson.loads(as_json.stdout)
    assert (status["scheduled"], status["pending"]) == (3, 1)
    next_due = datetime.fromisoformat(status["next_due_at"]).timestamp()
    assert abs(next_due - min(due)) < 0.001
    assert 50 < status["next_due_in_seconds"] <= 60
    assert f"scheduled messages:  3 (next due {status['next_due_at']}, in " in text.stdout
