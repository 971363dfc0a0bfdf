"""CDC mode's failure model is polling mode's, against real PostgreSQL (in-memory broker):
attempts up to --max-attempts, dead letters, --on-poison, `dead-letters retry` and
`drop`, per-key order kept, for rows and emitted events, across a restart."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import psycopg
import pytest

from relay import enqueue
from relay.cdc import aside, retention, session
from relay.cdc.aside import AsideStore, aside_lock_key
from relay.db import DbSession
from relay.deadletters import (
    Selection,
    drop_dead_letters,
    retry_dead_letters,
    selected_seqs,
)
from relay.errors import LeaseLostError
from relay.model import OutboxMessage, permanent, retryable
from relay.outbox_rows import Acknowledgement
from tests.support.cdc_relays import RunningCdcRelay, cdc_config, eventually
from tests.support.fakes import InMemoryConnector
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def quick_rounds(monkeypatch):
    monkeypatch.setattr(aside, "ASIDE_EVERY", 0.2)  # a person's retry is seen sooner
    monkeypatch.setattr(retention, "RETENTION_EVERY", 0.2)
    monkeypatch.setattr(session, "IDLE_SAVE_INTERVAL", 0.3)  # the watermark moves sooner


def write(dsn, key, numbers, *, topic="orders", emit=()):
    """One transaction per message; the numbers in ``emit`` go through outbox.emit()."""
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in numbers:
            if n in emit:
                row = conn.execute(
                    "SELECT outbox.emit(%s, %s, %s::jsonb)", (topic, key, f'{{"n": {n}}}')
                ).fetchone()
                ids.append(row[0])
            else:
                with conn.transaction():
                    ids.append(enqueue(conn, topic=topic, key=key, payload={"n": n}))
    return ids


def scalar(dsn, statement, params=()):
    with psycopg.connect(dsn) as conn:
        return conn.execute(statement, params).fetchone()[0]


def dead_letters(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, key, reason, attempts, last_error FROM outbox.dead_letters ORDER BY seq"
        ).fetchall()


def retry_key(dsn, key, *, drop=False):
    """`outbox-relay dead-letters retry --key K` (or drop), as the CLI runs it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for seqs in selected_seqs(conn, "outbox", Selection(key=key)):
            (drop_dead_letters if drop else retry_dead_letters)(conn, "outbox", seqs)


def waiting(dsn, key):
    return scalar(
        dsn,
        "SELECT count(*) FROM outbox.messages WHERE key = %s AND set_aside_at IS NOT NULL "
        "AND sent_at IS NULL",
        (key,),
    )


def keyed(published, key):
    return [m.id for m in published if m.key == key]


def test_a_refused_message_is_dead_lettered_its_key_waits_and_retry_restores_the_order(db_dsn):
    install_outbox(db_dsn)
    refuse = {"on": True}
    connector = InMemoryConnector(
        rules=[lambda m: permanent("unroutable") if refuse["on"] and m.topic == "poison" else None]
    )

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, retention=0), connector) as running:
            await running.streaming()
            first = await asyncio.to_thread(write, db_dsn, "K", [0], topic="poison")
            rest = await asyncio.to_thread(write, db_dsn, "K", [1, 2, 3], emit=(1, 3))
            others = await asyncio.to_thread(write, db_dsn, "other", range(5))
            await eventually(lambda: keyed(connector.published, "other") == others, 10, "others")
            await eventually(lambda: waiting(db_dsn, "K") == 3, 10, "K to wait in the table")
            await eventually(lambda: rows_left_but(db_dsn, "K") == 0, 10, "retention")
            assert keyed(connector.published, "K") == []  # blocked, not skipped
            assert waiting(db_dsn, "K") == 3  # retention spares what still waits
            refuse["on"] = False
            await asyncio.to_thread(retry_key, db_dsn, "K")
            await eventually(lambda: len(keyed(connector.published, "K")) == 4, 10, "K again")
            await eventually(lambda: scalar(db_dsn, "SELECT count(*) FROM outbox.messages") == 0,
                             10, "the table to empty")  # fmt: skip
            return first + rest

    k_ids = asyncio.run(scenario())
    assert keyed(connector.published, "K") == k_ids  # the dead letter first, then the rest
    assert dead_letters(db_dsn) == []
    assert scalar(db_dsn, "SELECT count(*) FROM outbox.key_holds") == 0


def rows_left_but(dsn, key):
    return scalar(dsn, "SELECT count(*) FROM outbox.messages WHERE key IS DISTINCT FROM %s", (key,))


def test_a_nacked_message_uses_up_its_attempts_then_becomes_a_dead_letter(db_dsn):
    install_outbox(db_dsn)
    nack = {"on": True}
    connector = InMemoryConnector(
        rules=[lambda m: retryable("nacked") if nack["on"] and m.topic == "full" else None]
    )
    config = cdc_config(db_dsn, max_attempts=3, retry_base=0.05, retry_cap=0.1)

    async def scenario():
        async with RunningCdcRelay(config, connector) as running:
            await running.streaming()
            k_ids = await asyncio.to_thread(write, db_dsn, "P", range(3), topic="full")
            others = await asyncio.to_thread(write, db_dsn, "other", range(3))
            await eventually(lambda: len(dead_letters(db_dsn)) == 1, 15, "the dead letter")
            await eventually(lambda: keyed(connector.published, "other") == others, 10, "others")
            letter = dead_letters(db_dsn)[0]
            held = scalar(db_dsn, "SELECT held_until = 'infinity' FROM outbox.key_holds")
            assert waiting(db_dsn, "P") == 2 and keyed(connector.published, "P") == []
            nack["on"] = False
            await asyncio.to_thread(retry_key, db_dsn, "P")
            await eventually(lambda: len(keyed(connector.published, "P")) == 3, 10, "P again")
            return k_ids, letter, held

    k_ids, letter, held = asyncio.run(scenario())
    assert letter == (k_ids[0], "P", "max_attempts", 3, "nacked")
    assert held  # --on-poison block
    assert keyed(connector.published, "P") == k_ids


def test_with_on_poison_skip_the_key_goes_on_and_a_dropped_letter_is_gone(db_dsn):
    install_outbox(db_dsn)
    connector = InMemoryConnector(
        rules=[lambda m: permanent("too large") if m.topic == "big" else None]
    )

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, on_poison="skip"), connector) as running:
            await running.streaming()
            await asyncio.to_thread(write, db_dsn, "K", [0], topic="big")
            later = await asyncio.to_thread(write, db_dsn, "K", [1, 2])
            await eventually(lambda: keyed(connector.published, "K") == later, 10, "K's later")
            await asyncio.to_thread(retry_key, db_dsn, "K", drop=True)
            return later

    asyncio.run(scenario())
    assert dead_letters(db_dsn) == []
    assert scalar(db_dsn, "SELECT count(*) FROM outbox.key_holds") == 0


def test_a_held_key_stays_held_across_a_restart_and_in_the_snapshot(db_dsn):
    """Messages written while no relay runs, and pending rows of a first start, must not
    pass a dead letter of their key either."""
    install_outbox(db_dsn)
    refuse = {"on": True}
    connector = InMemoryConnector(
        rules=[lambda m: permanent("refused") if refuse["on"] and m.topic == "poison" else None]
    )
    # pending before the first start: the snapshot publishes them
    k_ids = write(db_dsn, "K", [0], topic="poison") + write(db_dsn, "K", [1])

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn), connector) as first:
            await first.streaming()
            await eventually(lambda: len(dead_letters(db_dsn)) == 1, 10, "the dead letter")
            assert waiting(db_dsn, "K") == 1
        k_ids.extend(await asyncio.to_thread(write, db_dsn, "K", [2, 3], emit=(3,)))
        async with RunningCdcRelay(cdc_config(db_dsn), connector) as second:
            await second.streaming()
            marker = await asyncio.to_thread(write, db_dsn, "other", [0])
            await eventually(lambda: keyed(connector.published, "other") == marker, 10, "past K")
            assert keyed(connector.published, "K") == []
            # K's two rows are set aside in the round that published "other" when both
            # came in one batch: after the publish, so wait for the write
            await eventually(lambda: waiting(db_dsn, "K") == 3, 10, "K's rows set aside")
            assert keyed(connector.published, "K") == []
            refuse["on"] = False
            await asyncio.to_thread(retry_key, db_dsn, "K")
            await eventually(lambda: len(keyed(connector.published, "K")) == 4, 10, "K again")

    asyncio.run(scenario())
    assert keyed(connector.published, "K") == k_ids


def waiting_for_advisory_locks(dsn):
    return scalar(dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")


def test_a_deposed_leader_sets_nothing_aside_and_a_new_one_waits_for_its_write(db_dsn):
    """A leader frozen mid-write writes on a session its successor does not end: the
    successor reads the held keys only after that write, which then finds it no longer
    leads; so nothing of a key can pass a failure the deposed leader recorded."""
    install_outbox(db_dsn)
    message = OutboxMessage(id=uuid4(), topic="t", key="K", payload=b"{}")

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            relay = running.relay
            deposed = AsideStore(
                DbSession(db_dsn, "deposed", connect_timeout=5), relay.names,
                relay.aside.policy, leader_id=uuid4(), retention=0, batch_size=10, deadline=5,
            )  # fmt: skip
            try:
                with pytest.raises(LeaseLostError):
                    await deposed.settle([message], Acknowledgement())
            finally:
                await deposed.close()
            with psycopg.connect(db_dsn, autocommit=True) as writer:  # a write in flight
                writer.execute("BEGIN")
                writer.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (aside_lock_key("outbox_relay_outbox"),)
                )
                load = asyncio.create_task(relay.aside.load())
                await eventually(lambda: waiting_for_advisory_locks(db_dsn) == 1, 5, "the wait")
                assert not load.done()
                writer.execute("COMMIT")
            await asyncio.wait_for(load, 5)

    asyncio.run(scenario())
    assert scalar(db_dsn, "SELECT count(*) FROM outbox.messages") == 0


def test_the_idle_look_sees_a_set_aside_row_and_a_key_hold(db_dsn):
    """What an idle drain asks instead of a round: a set-aside row (due or not) or an
    active hold is something; a row sent, parked or not set aside, or a hold run out, is
    not."""
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            store = running.relay.aside
            answers = [await store.anything_set_aside()]
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                conn.execute(  # streamed, never set aside
                    "INSERT INTO outbox.messages (topic, key, payload) VALUES ('t', 'k', '{}')"
                )
                conn.execute("INSERT INTO outbox.key_holds (key, held_until, seq)"
                             " VALUES ('gone', now() - interval '1 s', 1)")
                answers.append(await store.anything_set_aside())
                conn.execute("UPDATE outbox.key_holds SET held_until = 'infinity'")
                answers.append(await store.anything_set_aside())
                conn.execute("DELETE FROM outbox.key_holds")
                store.held = {"K"}  # as a stream batch setting K aside meanwhile leaves it
                answers.append(await store.anything_set_aside())
                assert store.held == {"K"}  # not the look's to forget
                conn.execute(  # not due for an hour (and not a delayed message: created then)
                    "INSERT INTO outbox.messages (topic, key, payload, set_aside_at,"
                    " created_at, available_at) VALUES ('t', 'k', '{}', now(),"
                    " now() + interval '1 h', now() + interval '1 h')"
                )
                answers.append(await store.anything_set_aside())
            return answers

    assert asyncio.run(scenario()) == [False, False, True, False, True]
