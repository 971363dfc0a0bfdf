"""Poison messages in CDC mode, through the installed command against real brokers: the
same failure model as polling mode (tests/faults/test_poison.py). A message the broker
refuses gets its attempts counted, becomes a dead letter after --max-attempts (at once
when refused for good), its key is held per --on-poison, other keys keep flowing, and
`outbox-relay dead-letters retry` publishes it again before what waited behind it."""

from __future__ import annotations

import orjson
import psycopg
import pytest

from tests.faults.conftest import kafka_args, rabbit_args
from tests.faults.support import Figures, Workload, assert_clean, judge, read_everything, wait_for
from tests.faults.test_poison import _declare_full_queue, _make_room, dead_letters_cli
from tests.support.cli import outbox_relay

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

CDC = ["--mode", "cdc", "--cdc-takeover-ttl", "2s", "--cdc-heartbeat", "1s"]
STREAMING = "streaming slot"


def waiting_in_the_table(dsn: str, key: str) -> int:
    """Messages of ``key`` the CDC relay set aside, still to publish."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox.messages "
            "WHERE key = %s AND set_aside_at IS NOT NULL AND sent_at IS NULL",
            (key,),
        ).fetchone()
    return int(row[0]) if row else 0


def numbers(received) -> list[int]:
    return [orjson.loads(r.value)["n"] for r in received]


def judge_good(work: Workload, read, key: str, scenario: str) -> Figures:
    """Lost and reordered among the other keys' messages (everything but ``key``)."""
    expected = {i: v for i, v in work.expected().items() if v[0] != key}
    return judge(Figures(scenario), read_everything(read, expected), expected)


def test_cdc_an_unroutable_message_is_a_dead_letter_and_retry_restores_its_keys_order(
    outbox, rabbit, relays, report
):
    good, nowhere = rabbit.new_topic(), rabbit.unroutable_topic()
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange), *CDC)
    relay.wait_for_log(STREAMING, 30)
    work = Workload(outbox, good, keys=5)
    for n in range(4):  # each its own transaction; the later ones wait behind the first
        work.enqueue("K", {"n": n}, topic=nowhere)
    work.backlog(300)
    wait_for(lambda: len(work.dead_letters()) == 1, 30, "the unroutable message")
    figures = judge_good(work, lambda n, t: rabbit.read(good, n, t), "K", "cdc unroutable")
    letter = work.dead_letters()[0]
    assert letter["reason"] == "permanent" and letter["attempts"] == 1
    assert "NO_ROUTE" in letter["last_error"] or "312" in letter["last_error"]
    wait_for(lambda: waiting_in_the_table(outbox, "K") == 3, 30, "K's others to wait")
    shown = dead_letters_cli(outbox, "show", letter["id"], "--json")
    assert shown["key_held"] and shown["topic"] == nowhere
    rabbit._run(lambda ch: rabbit._declare_queue(ch, nowhere, f"{nowhere}.q"))
    rabbit._queues[nowhere] = f"{nowhere}.q"
    dead_letters_cli(outbox, "retry", "--key", "K")
    assert numbers(rabbit.read(nowhere, 4, timeout=20)) == [0, 1, 2, 3]
    wait_for(lambda: waiting_in_the_table(outbox, "K") == 0, 10, "the table to empty")
    assert work.dead_letters() == []
    figures.dead_letters = 1
    report(figures)
    assert_clean(figures)
    assert relay.terminate() == 0


def test_cdc_a_message_the_broker_keeps_nacking_uses_up_its_attempts_then_retries_in_order(
    outbox, rabbit, relays, report
):
    good = rabbit.new_topic()
    nacked = f"{rabbit.exchange}.full"
    rabbit._run(lambda ch: _declare_full_queue(ch, rabbit.exchange, nacked))
    work = Workload(outbox, good, keys=10)
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange), *CDC, "--max-attempts", "3")
    relay.wait_for_log(STREAMING, 30)
    for n in range(4):
        work.enqueue("p", {"n": n}, topic=nacked)
    work.start_writer(per_second=100)  # good traffic: the broker is visibly up
    try:
        wait_for(lambda: len(work.dead_letters()) == 1, 60, "the nacked message's attempts")
        letter = work.dead_letters()[0]
        assert letter["reason"] == "max_attempts" and letter["attempts"] == 3
        assert waiting_in_the_table(outbox, "p") == 3
        rabbit._run(lambda ch: _make_room(ch, rabbit, nacked))
        dead_letters_cli(outbox, "retry", "--key", "p")
        assert numbers(rabbit.read(nacked, 4, timeout=20)) == [0, 1, 2, 3]  # original order
    finally:
        work.stop_writer()
    figures = judge_good(work, lambda n, t: rabbit.read(good, n, t), "p", "cdc nacked")
    figures.dead_letters = 1
    report(figures)
    assert_clean(figures)
    assert relay.terminate() == 0


def test_cdc_with_on_poison_skip_an_oversized_message_lets_its_key_go_on(
    outbox, kafka, relays, report
):
    topic = kafka.new_topic(partitions=2)
    relay = relays(*kafka_args(kafka.bootstrap), *CDC, "--on-poison", "skip")
    relay.wait_for_log(STREAMING, 30)
    work = Workload(outbox, topic, keys=10)
    work.enqueue("K", {"n": 0, "blob": "x" * 1_200_000})  # over --max-message-bytes
    for n in range(1, 4):
        work.enqueue("K", {"n": n})
    work.backlog(200)
    wait_for(lambda: len(work.dead_letters()) == 1, 30, "the oversized message")
    letter = work.dead_letters()[0]
    assert letter["reason"] == "permanent" and "over the limit" in letter["last_error"]
    expected = {i: v for i, v in work.expected().items() if i != letter["id"]}
    received = read_everything(lambda n, t: kafka.read(topic, n, t), expected)
    assert [numbers([r])[0] for r in received if r.key == "K"][:3] == [1, 2, 3]  # not held
    status = outbox_relay("status", "--dsn", outbox)
    assert "parked messages:     1" in status.stdout
    dead_letters_cli(outbox, "drop", letter["id"])
    assert work.dead_letters() == []
    figures = judge(Figures("cdc oversized, skip"), received, expected)
    figures.dead_letters = 1
    report(figures)
    assert_clean(figures)
    assert relay.terminate() == 0
