"""Poison messages among good ones: each becomes a dead letter with its error, its key's
later messages wait behind it (``--on-poison block``), every other key keeps flowing, and
``outbox-relay dead-letters retry|drop`` lets the key go on, in order."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from tests.faults.conftest import kafka_args, rabbit_args
from tests.faults.support import Figures, Workload, assert_clean, judge, read_everything, wait_for
from tests.support.cli import outbox_relay

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def pending_of_key(dsn: str, key: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox.messages WHERE key = %s AND sent_at IS NULL", (key,)
        ).fetchone()
    return int(row[0]) if row else 0


def dead_letters_cli(dsn: str, *args: str) -> dict:
    result = outbox_relay("dead-letters", *args, "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout) if "--json" in args else {"text": result.stdout}


def test_an_oversized_message_is_dead_lettered_and_its_key_waits(outbox, kafka, relays, report):
    topic = kafka.new_topic(partitions=2)
    work = Workload(outbox, topic, keys=10)
    work.backlog(300)
    work.enqueue("k3", {"blob": "x" * 1_200_000})  # over --max-message-bytes: PERMANENT
    work.backlog(300)  # k3's share of these must wait behind the poison
    relay = relays(*kafka_args(kafka.bootstrap))
    wait_for(lambda: len(work.dead_letters()) == 1, 30, "the poison to become a dead letter")
    wait_for(lambda: work.counts()[1] == pending_of_key(outbox, "k3"), 30, "the other keys")
    assert pending_of_key(outbox, "k3") == 30  # blocked, not skipped
    listed = dead_letters_cli(outbox, "list", "--json", "--key", "k3")
    assert listed["total"] == 1
    letter = listed["dead_letters"][0]
    assert letter["reason"] == "permanent" and "over the limit" in letter["last_error"]
    dead_letters_cli(outbox, "drop", letter["id"])
    work.wait_drained(timeout=30)
    expected = work.expected()
    del expected[letter["id"]]  # dropped by a person: never published
    figures = judge(
        Figures("oversized poison among good messages"),
        read_everything(lambda n, t: kafka.read(topic, n, t), expected),
        expected,
    )
    figures.dead_letters = 1
    report(figures)
    assert_clean(figures)
    assert relay.terminate() == 0


def test_a_message_the_broker_keeps_nacking_uses_up_its_attempts_then_retries_in_order(
    outbox, rabbit, relays, report
):
    good = rabbit.new_topic()
    nacked = f"{rabbit.exchange}.full"
    rabbit._run(lambda ch: _declare_full_queue(ch, rabbit.exchange, nacked))
    work = Workload(outbox, good, keys=10)
    work.enqueue("p", {"n": 0}, topic=nacked)
    for n in range(1, 4):
        work.enqueue("p", {"n": n}, topic=nacked)  # wait behind the first
    work.start_writer(per_second=100)  # good traffic: the broker is visibly up
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange), "--max-attempts", "3")
    try:
        wait_for(
            lambda: len(work.dead_letters()) == 1, 60, "the nacked message to use up its tries"
        )
        letter = work.dead_letters()[0]
        assert letter["reason"] == "max_attempts" and letter["attempts"] == 3
        assert pending_of_key(outbox, "p") == 3
        rabbit._run(lambda ch: _make_room(ch, rabbit, nacked))
        dead_letters_cli(outbox, "retry", "--key", "p")
        wait_for(lambda: pending_of_key(outbox, "p") == 0, 30, "the key to flow again")
    finally:
        work.stop_writer()
    work.wait_drained(timeout=30)
    received = rabbit.read(nacked, 4, timeout=20)
    assert [orjson.loads(r.value)["n"] for r in received] == [0, 1, 2, 3]  # original order
    expected = work.expected()
    figures = judge(
        Figures("message nacked until its attempts ran out"),
        read_everything(
            lambda n, t: rabbit.read(good, n, t), {i for i, (k, _) in expected.items() if k != "p"}
        ),
        {i: v for i, v in expected.items() if v[0] != "p"},
    )
    figures.dead_letters = 1
    report(figures)
    assert_clean(figures)
    assert relay.terminate() == 0


def _declare_full_queue(channel, exchange: str, topic: str) -> None:
    channel.exchange_declare(exchange, "topic", durable=True)
    arguments = {"x-max-length": 0, "x-overflow": "reject-publish", "x-expires": 600_000}
    channel.queue_declare(f"{topic}.q", durable=True, arguments=arguments)
    channel.queue_bind(f"{topic}.q", exchange, routing_key=topic)


def _make_room(channel, rabbit, topic: str) -> None:
    channel.queue_delete(f"{topic}.q")
    rabbit._declare_queue(channel, topic, f"{topic}.q")
    rabbit._queues[topic] = f"{topic}.q"


def test_an_unroutable_rabbitmq_message_is_dead_lettered(outbox, rabbit, relays, report):
    topic, nowhere = rabbit.new_topic(), rabbit.unroutable_topic()
    work = Workload(outbox, topic, keys=5)
    work.enqueue("lonely", {"n": 0}, topic=nowhere)
    work.backlog(500)
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange))
    wait_for(lambda: len(work.dead_letters()) == 1, 30, "the unroutable message")
    work.wait_drained(timeout=30)
    letter = work.dead_letters()[0]
    assert letter["reason"] == "permanent"
    assert "NO_ROUTE" in letter["last_error"] or "312" in letter["last_error"]
    shown = dead_letters_cli(outbox, "show", letter["id"], "--json")
    assert shown["topic"] == nowhere and shown["key"] == "lonely"
    status = outbox_relay("status", "--dsn", outbox)
    assert "parked messages:     1" in status.stdout
    expected = work.expected()
    figures = judge(
        Figures("rabbitmq unroutable message"),
        read_everything(lambda n, t: rabbit.read(topic, n, t), expected),
        expected,
    )
    figures.dead_letters = 1
    report(figures)
    assert_clean(figures)
    assert relay.proc.poll() is None
    assert relay.terminate() == 0
