"""A message the RabbitMQ connector refuses before it leaves the relay holds back its
key's later messages in the same batch (issue 27, item 1), through the installed command
and read back with plain pika."""

from __future__ import annotations

import json
import time
import uuid

import pika
import psycopg
import pytest

from tests.support.cli import RelayProcess, outbox_relay

pytestmark = pytest.mark.e2e
FAST = ["--lease-ttl", "4s", "--publish-timeout", "2s", "--poll-interval", "300ms"]

# Each key's n=1 carries something AMQP cannot carry; the others are ordinary.
REFUSED = {
    "header-name": {"headers": {"h" * 300: "v"}},  # a short string: at most 255 bytes
    "content-type": {"content_type": "text/" + "x" * 295},
    "routing-key": {"topic": "é" * 249},  # 249 characters, 498 bytes of UTF-8
    "headers-200k": {"headers": {f"h{i}": "v" * 1000 for i in range(200)}},  # > frame_max
}


@pytest.fixture
def exchange(amqp_url):
    """A fresh exchange with one queue bound to its topic; yields (exchange, topic, channel)."""
    name = f"refusals-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(name, "topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, name, routing_key=f"{name}.events")
    yield name, f"{name}.events", channel, queue
    channel.exchange_delete(name)
    connection.close()


def enqueue(dsn, topic):
    with psycopg.connect(dsn) as conn:
        for key, odd in [*REFUSED.items(), ("plain", {})]:
            for n in range(4):
                special = odd if n == 1 else {}
                conn.execute(
                    "INSERT INTO outbox.messages (topic, key, payload, headers, content_type)"
                    " VALUES (%s, %s, %s::json, %s::jsonb, %s)",
                    (
                        special.get("topic", topic),
                        key,
                        json.dumps({"key": key, "n": n}),
                        json.dumps(special.get("headers", {})),
                        special.get("content_type", "application/json"),
                    ),
                )


def consume(channel, queue, count, timeout):
    """(key, n) of each message that arrived, in arrival order, until ``count`` or timeout."""
    seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        method, _properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            channel.connection.sleep(0.05)
            continue
        event = json.loads(body)
        seen.append((event["key"], event["n"]))
    return seen


def wait_for_dead_letters(dsn, count, relay, timeout):
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM outbox.dead_letters").fetchone()[0] < count:
            assert relay.proc.poll() is None, relay.output()
            assert time.monotonic() < deadline, f"{count} dead letters never appeared"
            time.sleep(0.1)  # a poll with a deadline: the relay sends no event for this


def by_key(seen):
    grouped: dict[str, list[int]] = {}
    for key, n in seen:
        grouped.setdefault(key, []).append(n)
    return grouped


def test_a_refused_message_holds_back_its_keys_later_messages_in_the_batch(
    db_dsn, amqp_url, exchange, tmp_path
):
    name, topic, channel, queue = exchange
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    enqueue(db_dsn, topic)
    args = ["--dsn", db_dsn, "--connector", "rabbitmq", "--amqp-url", amqp_url]
    relay = RelayProcess([*args, "--amqp-exchange", name, *FAST], tmp_path / "relay.log")
    try:
        wait_for_dead_letters(db_dsn, 4, relay, timeout=30)
        # The batch was confirmed before its dead letters were written: everything the
        # relay sent is in the queue. n=0 of every key and the whole plain key, no more.
        first = by_key(consume(channel, queue, 9, timeout=2))
        assert first == {key: [0] for key in REFUSED} | {"plain": [0, 1, 2, 3]}
        status = outbox_relay("status", "--dsn", db_dsn).stdout
        assert "held keys:           4" in status
        assert "parked messages:     4" in status
        assert outbox_relay("dead-letters", "drop", "--all", "--dsn", db_dsn).returncode == 0
        # released: n=2 and n=3 of each key follow, in order
        after = by_key(consume(channel, queue, 8, timeout=30))
        assert after == {key: [2, 3] for key in REFUSED}
        assert relay.terminate() == 0
    finally:
        relay.stop()
