"""Failure handling in-process against real PostgreSQL: the circuit breaker during a
broker outage, attempts and dead letters, retry in order, and the health endpoints."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import psycopg
import pytest

from relay import enqueue
from relay.deadletters import Selection, retry_dead_letters, selected_seqs
from relay.model import permanent, retryable
from tests.support.fakes import InMemoryConnector
from tests.support.processes import free_port
from tests.support.relays import RunningRelay, eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration


def write(dsn, keys, topic="orders"):
    with psycopg.connect(dsn) as conn:
        return [enqueue(conn, topic=topic, key=k, payload={"i": i}) for i, k in enumerate(keys)]


def scalar(dsn, sql):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()[0]


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_an_outage_opens_the_circuit_stops_claiming_and_burns_no_attempts(db_dsn):
    install_outbox(db_dsn)
    write(db_dsn, [f"k{i % 5}" for i in range(50)])
    connector = InMemoryConnector(down=True)
    port = free_port()
    config = relay_config(
        db_dsn, max_attempts=2, metrics_port=port, retry_cap=1.0, retention=3600
    )  # keep sent rows: their attempts are the point

    claims = {"while_open": 0, "after": 0}

    def count_claims(poller, breaker):
        drain_once = poller.drain_once

        async def counted():
            # a claim while the cooldown runs is a hot loop against a broker that is down
            claims["while_open" if breaker.retry_in() > 0 else "after"] += 1
            return await drain_once()

        poller.drain_once = counted

    async def scenario():
        async with RunningRelay(config, connector) as relay:
            breaker = relay.service.breaker
            for poller in relay.service.source.pollers:
                count_claims(poller, breaker)
            await eventually(lambda: breaker.state.value == "open", 10, "the circuit to open")
            status, body = await asyncio.to_thread(get, port, "/readyz")
            assert status == 503 and '"broker_circuit":"open"' in body
            assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
            batches = connector.batches
            await asyncio.sleep(1.5)
            calls_while_open = connector.batches - batches
            connector.down = False
            await eventually(lambda: len(connector.published) >= 50, 15, "the backlog")
            metrics = (await asyncio.to_thread(get, port, "/metrics"))[1]
            return calls_while_open, metrics

    calls_while_open, metrics = asyncio.run(scenario())
    assert calls_while_open <= 3  # a probe every cooldown, not a hot loop
    assert claims["while_open"] == 0 and claims["after"] > 0
    assert scalar(db_dsn, "SELECT max(attempts) FROM outbox.messages") == 1  # the final send
    assert scalar(db_dsn, "SELECT count(*) FROM outbox.dead_letters") == 0
    assert 'outbox_relay_circuit_transitions_total{connector="memory",state="open"}' in metrics
    assert (
        'outbox_relay_messages_total{connector="memory",outcome="delivered",topic="orders"} 50.0'
        in metrics
    )
    assert "outbox_relay_outage_batches_total" in metrics


def test_a_message_that_keeps_failing_moves_to_the_dead_letters_and_blocks_only_its_key(db_dsn):
    install_outbox(db_dsn)
    ids = write(db_dsn, ["bad", "bad", "ok", "bad", "ok"])
    # A rule is the broker's answer about one message (a nack): each one is an attempt,
    # even when nothing else is in the batch.
    connector = InMemoryConnector(rules=[lambda m: retryable("nacked") if m.id == ids[0] else None])

    async def scenario():
        async with RunningRelay(relay_config(db_dsn, max_attempts=3), connector):
            await eventually(
                lambda: scalar(db_dsn, "SELECT count(*) FROM outbox.dead_letters") == 1,
                15,
                "the dead letter",
            )
            await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert [m.key for m in connector.published] == ["ok", "ok"]
    with psycopg.connect(db_dsn) as conn:
        letter = conn.execute(
            "SELECT key, attempts, reason, last_error FROM outbox.dead_letters"
        ).fetchone()
        waiting = conn.execute(
            "SELECT count(*) FROM outbox.messages WHERE key = 'bad' AND sent_at IS NULL"
        ).fetchone()[0]
    assert letter == ("bad", 3, "max_attempts", "nacked")
    assert waiting == 2


def test_retry_puts_a_dead_letter_back_before_the_messages_that_waited(db_dsn):
    install_outbox(db_dsn)
    ids = write(db_dsn, ["k", "k", "k"])
    refuse = {"on": True}
    connector = InMemoryConnector(
        rules=[lambda m: permanent("refused") if refuse["on"] and m.id == ids[0] else None]
    )

    async def scenario():
        async with RunningRelay(relay_config(db_dsn), connector):
            await eventually(
                lambda: scalar(db_dsn, "SELECT count(*) FROM outbox.dead_letters") == 1,
                10,
                "the dead letter",
            )
            await asyncio.sleep(0.3)
            assert connector.published == []  # the key waits (block)
            refuse["on"] = False
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                for chunk in selected_seqs(conn, "outbox", Selection(key="k")):
                    assert retry_dead_letters(conn, "outbox", chunk) == 1
            await eventually(lambda: len(connector.published) == 3, 10, "the key to flow")

    asyncio.run(scenario())
    assert [m.id for m in connector.published] == ids  # the retried one first
    assert scalar(db_dsn, "SELECT count(*) FROM outbox.key_holds") == 0


def test_skip_lets_the_rest_of_the_key_pass_a_dead_letter(db_dsn):
    install_outbox(db_dsn)
    ids = write(db_dsn, ["k", "k", "k"])
    connector = InMemoryConnector(rules=[lambda m: permanent("no") if m.id == ids[0] else None])

    async def scenario():
        async with RunningRelay(relay_config(db_dsn, on_poison="skip"), connector):
            await eventually(lambda: len(connector.published) == 2, 10, "the rest of the key")

    asyncio.run(scenario())
    assert [m.id for m in connector.published] == ids[1:]
    assert scalar(db_dsn, "SELECT count(*) FROM outbox.key_holds") == 0


def test_rows_parked_in_place_move_to_the_dead_letters(db_dsn):
    """Relays of an earlier version (and the CDC parker) set parked_at; the trigger of
    migration 3 moves such rows, so there is one place to look."""
    install_outbox(db_dsn)
    write(db_dsn, ["k"])
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE outbox.messages SET parked_at = now(), last_error = 'old relay'")
        assert conn.execute("SELECT count(*) FROM outbox.messages").fetchone()[0] == 0
        row = conn.execute("SELECT reason, last_error FROM outbox.dead_letters").fetchone()
    assert row == ("parked", "old relay")
