"""The consumer inbox against a real PostgreSQL, and end to end through real brokers.

Concurrency tests script the interleaving: the first consumer's handler signals once it
holds the id and waits for a go; the second is released only after PostgreSQL shows it
waiting on a lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from relay.errors import SchemaMissingError
from relay.inbox import (
    AsyncInbox,
    Inbox,
    confluent_kafka_message_id,
    pika_message_id,
    purge_inbox,
    purge_inbox_async,
)
from relay.migrations import migrate

pytestmark = pytest.mark.integration
SCHEMA = "consumer_side"
INBOX_TABLE = sql.Identifier(SCHEMA, "inbox")
DEADLINE = 10.0


@pytest.fixture
def dsn(db_dsn: str) -> str:
    """A fresh database with the inbox (only) and a table where handlers leave effects."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, SCHEMA, tracks=("inbox",))
        conn.execute("CREATE TABLE effects (message_id text NOT NULL, note text NOT NULL)")
    return db_dsn


def effect(note: str = "done") -> Callable[[psycopg.Connection[Any]], str]:
    """A handler that writes one effect row for the message it is given."""

    def handler(conn: psycopg.Connection[Any]) -> str:
        conn.execute("INSERT INTO effects VALUES (current_setting('test.message_id'), %s)", (note,))
        return note

    return handler


def deliver(inbox: Inbox, conn: psycopg.Connection[Any], message_id: str, note: str = "done"):
    conn.execute("SELECT set_config('test.message_id', %s, false)", (message_id,))
    if not conn.autocommit and conn.info.transaction_status == TransactionStatus.INTRANS:
        conn.commit()
    return inbox.process(conn, message_id, effect(note))


def effects(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT message_id, note FROM effects ORDER BY 1, 2").fetchall()


def recorded(dsn: str, consumer: str = "billing") -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT message_id FROM {} WHERE consumer = %s ORDER BY 1").format(INBOX_TABLE),
            (consumer,),
        ).fetchall()
    return [row[0] for row in rows]


def wait_until_waiting_on_lock(observer: psycopg.Connection[Any], pid: int) -> None:
    deadline = time.monotonic() + DEADLINE
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s"
    while time.monotonic() < deadline:
        row = observer.execute(query, (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited on a lock")


# --- at most once per consumer ------------------------------------------------------------


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "idle-transaction"])
def test_the_same_message_delivered_many_times_takes_effect_once(dsn, autocommit):
    inbox = Inbox(consumer="billing", schema=SCHEMA)
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        outcomes = [deliver(inbox, conn, "m-1") for _ in range(5)]
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert [o.duplicate for o in outcomes] == [False, True, True, True, True]
    assert all(o.committed for o in outcomes)
    assert outcomes[0].result == "done" and outcomes[1].result is None
    assert effects(dsn) == [("m-1", "done")]


def test_each_consumer_has_its_own_record_of_ids(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        first = deliver(Inbox(consumer="billing", schema=SCHEMA), conn, "m-1", "billing")
        second = deliver(Inbox(consumer="shipping", schema=SCHEMA), conn, "m-1", "shipping")
    assert not first.duplicate and not second.duplicate
    assert effects(dsn) == [("m-1", "billing"), ("m-1", "shipping")]


def test_a_failing_handler_records_nothing_and_the_redelivery_is_processed(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA)

    def failing(conn: psycopg.Connection[Any]) -> None:
        effect("half-done")(conn)
        raise RuntimeError("payment service unavailable")

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('test.message_id', 'm-1', false)")
        with pytest.raises(RuntimeError, match="payment service"):
            inbox.process(conn, "m-1", failing)
        assert recorded(dsn) == [] and effects(dsn) == []
        again = deliver(inbox, conn, "m-1")
    assert not again.duplicate
    assert effects(dsn) == [("m-1", "done")]


def test_a_crash_after_commit_but_before_the_ack_skips_the_redelivery(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as conn:
        first = deliver(inbox, conn, "m-1")
    # the process died here: the broker never got the ack and delivers again
    with psycopg.connect(dsn, autocommit=True) as conn:
        again = deliver(inbox, conn, "m-1")
    assert first.committed and again.duplicate
    assert effects(dsn) == [("m-1", "done")]


def test_inside_the_callers_transaction_the_inbox_uses_a_savepoint(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA)

    def failing(conn: psycopg.Connection[Any]) -> None:
        effect("half-done")(conn)
        raise RuntimeError("rejected")

    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO effects VALUES ('caller', 'own write')")
        conn.execute("SELECT set_config('test.message_id', 'm-1', false)")
        with pytest.raises(RuntimeError):
            inbox.process(conn, "m-1", failing)
        # the caller's transaction survived the handler's failure
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        conn.execute("SELECT set_config('test.message_id', 'm-2', false)")
        outcome = inbox.process(conn, "m-2", effect())
        assert not outcome.committed
        assert recorded(dsn) == []  # nothing is visible before the caller commits
        conn.commit()
    assert recorded(dsn) == ["m-2"]
    assert effects(dsn) == [("caller", "own write"), ("m-2", "done")]


def test_a_caller_rollback_forgets_the_id(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('test.message_id', 'm-1', false)")
        with pytest.raises(LookupError), conn.transaction():
            assert not inbox.process(conn, "m-1", effect()).committed
            raise LookupError("the caller gives up")
        assert not deliver(inbox, conn, "m-1").duplicate
    assert effects(dsn) == [("m-1", "done")]


def test_the_claim_context_manager_reads_like_a_guard(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA, keep_results=True)
    seen = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(2):
            with inbox.claim(conn, "m-1") as claim:
                seen.append(claim.duplicate)
                if not claim.duplicate:
                    conn.execute("INSERT INTO effects VALUES ('m-1', 'claimed')")
                    claim.keep_result({"status": "ok"})
            assert claim.committed
    assert seen == [False, True]
    assert claim.result == {"status": "ok"}
    assert effects(dsn) == [("m-1", "claimed")]


def test_kept_results_are_replayed_to_duplicates(dsn):
    inbox = Inbox(consumer="api", schema=SCHEMA, keep_results=True)
    calls = []

    def create_invoice(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        calls.append(1)
        return {"invoice": 1017, "lines": [1, 2]}

    with psycopg.connect(dsn, autocommit=True) as conn:
        first = inbox.process(conn, "idem-key-1", create_invoice)
        replay = inbox.process(conn, "idem-key-1", create_invoice)
    assert calls == [1]
    assert replay.duplicate and replay.result == first.result == {"invoice": 1017, "lines": [1, 2]}


def test_a_result_that_cannot_be_kept_rolls_everything_back(dsn):
    inbox = Inbox(consumer="api", schema=SCHEMA, keep_results=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('test.message_id', 'm-1', false)")
        with pytest.raises(TypeError, match="JSON-serializable"):
            inbox.process(conn, "m-1", lambda c: (effect()(c), object()))
    assert recorded(dsn, "api") == [] and effects(dsn) == []


def test_a_missing_inbox_table_says_how_to_create_it(dsn):
    inbox = Inbox(consumer="billing", schema="not_migrated")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(SchemaMissingError, match="migrate --inbox-only"):
            inbox.process(conn, "m-1", effect())
        assert conn.info.transaction_status == TransactionStatus.INTRANS


def test_a_connection_pool_lends_a_connection_per_message(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA)

    def handler(conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO effects VALUES ('m-1', 'pooled')")

    with ConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        outcomes = [inbox.process(pool, "m-1", handler) for _ in range(3)]
    assert [o.duplicate for o in outcomes] == [False, True, True]
    assert effects(dsn) == [("m-1", "pooled")]


# --- concurrent duplicates ----------------------------------------------------------------


@pytest.mark.parametrize("first_outcome", ["commits", "rolls back"])
def test_a_concurrent_duplicate_waits_for_the_first_delivery(dsn, first_outcome):
    inbox = Inbox(consumer="billing", schema=SCHEMA)
    holding, release = threading.Event(), threading.Event()

    def first_handler(conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO effects VALUES ('m-1', 'first')")
        holding.set()
        assert release.wait(DEADLINE)
        if first_outcome == "rolls back":
            raise RuntimeError("first delivery failed")

    def second_handler(conn: psycopg.Connection[Any]) -> None:
        conn.execute("INSERT INTO effects VALUES ('m-1', 'second')")

    with (
        psycopg.connect(dsn, autocommit=True) as first,
        psycopg.connect(dsn, autocommit=True) as second,
        psycopg.connect(dsn, autocommit=True) as observer,
        ThreadPoolExecutor(2) as threads,
    ):
        first_done = threads.submit(inbox.process, first, "m-1", first_handler)
        assert holding.wait(DEADLINE)
        second_done = threads.submit(inbox.process, second, "m-1", second_handler)
        wait_until_waiting_on_lock(observer, second.info.backend_pid)
        release.set()
        if first_outcome == "commits":
            assert not first_done.result(DEADLINE).duplicate
            assert second_done.result(DEADLINE).duplicate
        else:
            with pytest.raises(RuntimeError):
                first_done.result(DEADLINE)
            assert not second_done.result(DEADLINE).duplicate
    winner = "first" if first_outcome == "commits" else "second"
    assert effects(dsn) == [("m-1", winner)]
    assert recorded(dsn) == ["m-1"]


@pytest.mark.parametrize("first_outcome", ["commits", "rolls back"])
def test_async_concurrent_duplicates_take_effect_once(dsn, first_outcome):
    inbox = AsyncInbox(consumer="billing", schema=SCHEMA)

    async def scenario() -> tuple[bool, bool | None]:
        holding, release = asyncio.Event(), asyncio.Event()

        async def first_handler(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("INSERT INTO effects VALUES ('m-1', 'first')")
            holding.set()
            await release.wait()
            if first_outcome == "rolls back":
                raise RuntimeError("first delivery failed")

        async def second_handler(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("INSERT INTO effects VALUES ('m-1', 'second')")

        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as first,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as second,
        ):
            first_task = asyncio.create_task(inbox.process(first, "m-1", first_handler))
            await asyncio.wait_for(holding.wait(), DEADLINE)
            second_task = asyncio.create_task(inbox.process(second, "m-1", second_handler))
            pid = second.info.backend_pid
            with psycopg.connect(dsn, autocommit=True) as observer:
                await asyncio.to_thread(wait_until_waiting_on_lock, observer, pid)
            release.set()
            first_result = await asyncio.gather(first_task, return_exceptions=True)
            second_result = await asyncio.wait_for(second_task, DEADLINE)
        first_duplicate = (
            None if isinstance(first_result[0], BaseException) else first_result[0].duplicate
        )
        return second_result.duplicate, first_duplicate

    second_duplicate, first_duplicate = asyncio.run(scenario())
    if first_outcome == "commits":
        assert (first_duplicate, second_duplicate) == (False, True)
        assert effects(dsn) == [("m-1", "first")]
    else:
        assert (first_duplicate, second_duplicate) == (None, False)
        assert effects(dsn) == [("m-1", "second")]


# --- asyncio ------------------------------------------------------------------------------


def test_async_inbox_processes_once_and_rolls_back_failures(dsn):
    inbox = AsyncInbox(consumer="billing", schema=SCHEMA, keep_results=True)

    async def apply(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
        await conn.execute("INSERT INTO effects VALUES ('m-1', 'async')")
        return {"balance": 5}

    async def failing(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("INSERT INTO effects VALUES ('m-2', 'half-done')")
        raise RuntimeError("downstream refused")

    async def scenario() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            outcomes = [await inbox.process(conn, "m-1", apply) for _ in range(3)]
            with pytest.raises(RuntimeError):
                await inbox.process(conn, "m-2", failing)
            async with conn.transaction():
                nested = await inbox.process(conn, "m-3", apply)
            async with inbox.claim(conn, "m-3") as claim:
                assert claim.duplicate and claim.result == {"balance": 5}
        return [*outcomes, nested]

    outcomes = asyncio.run(scenario())
    assert [o.duplicate for o in outcomes] == [False, True, True, False]
    assert [o.committed for o in outcomes] == [True, True, True, False]
    assert outcomes[2].result == {"balance": 5}
    assert recorded(dsn) == ["m-1", "m-3"]


def test_async_pool_and_purge(dsn):
    inbox = AsyncInbox(consumer="billing", schema=SCHEMA)

    async def apply(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("INSERT INTO effects VALUES ('m-1', 'pooled')")

    age_everything = sql.SQL("UPDATE {} SET processed_at = now() - '8d'::interval").format(
        INBOX_TABLE
    )

    async def scenario() -> tuple[list[bool], int]:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            outcomes = [(await inbox.process(pool, "m-1", apply)).duplicate for _ in range(2)]
            async with pool.connection() as conn:
                await conn.set_autocommit(True)
                await conn.execute(age_everything)
                purged = await purge_inbox_async(conn, SCHEMA, batch_size=1)
        return outcomes, purged

    assert asyncio.run(scenario()) == ([False, True], 1)
    assert recorded(dsn) == []


# --- retention ----------------------------------------------------------------------------


def add_entries(
    conn: psycopg.Connection[Any], prefix: str, count: int, age: str, consumer: str = "billing"
) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (consumer, message_id, processed_at) "
            "SELECT %s, %s || i, now() - %s::interval FROM generate_series(1, %s) AS i"
        ).format(INBOX_TABLE),
        (consumer, prefix, age, count),
    )


def test_purge_deletes_only_entries_older_than_the_window_in_batches(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        add_entries(conn, "old-", 25, "8 days")
        add_entries(conn, "recent-", 3, "6 days")
        add_entries(conn, "other-", 4, "30 days", consumer="shipping")
        assert purge_inbox(conn, SCHEMA, consumer="billing", batch_size=10) == 25
        assert purge_inbox(conn, SCHEMA, older_than=86400 * 7) == 4
    assert recorded(dsn) == ["recent-1", "recent-2", "recent-3"]
    assert recorded(dsn, "shipping") == []


def test_purge_skips_what_a_consumer_holds_and_never_waits_for_it(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as setup:
        add_entries(setup, "old-", 50, "8 days")
    consumer = psycopg.connect(dsn)
    try:
        # a consumer transaction in flight: it holds a fresh id and a lock on an old row
        consumer.execute("SELECT set_config('test.message_id', 'new-1', false)")
        assert not inbox.process(consumer, "new-1", effect()).committed
        consumer.execute(
            sql.SQL("SELECT 1 FROM {} WHERE message_id = 'old-1' FOR UPDATE").format(INBOX_TABLE)
        )
        with psycopg.connect(
            dsn, autocommit=True, options="-c statement_timeout=5000 -c lock_timeout=2000"
        ) as purger:
            started = time.monotonic()
            assert purge_inbox(purger, SCHEMA, batch_size=7) == 49
            assert time.monotonic() - started < 5
        # the consumer carries on unaffected
        consumer.execute("SELECT set_config('test.message_id', 'new-2', false)")
        assert not inbox.process(consumer, "new-2", effect()).duplicate
        consumer.commit()
    finally:
        consumer.close()
    assert recorded(dsn) == ["new-1", "new-2", "old-1"]
    assert effects(dsn) == [("new-1", "done"), ("new-2", "done")]
    with psycopg.connect(dsn, autocommit=True) as purger:
        assert purge_inbox(purger, SCHEMA) == 1


def test_an_id_older_than_the_window_is_processed_again(dsn):
    inbox = Inbox(consumer="billing", schema=SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as conn:
        deliver(inbox, conn, "m-1")
        conn.execute(
            sql.SQL("UPDATE {} SET processed_at = now() - '8 days'::interval").format(INBOX_TABLE)
        )
        assert purge_inbox(conn, SCHEMA) == 1
        assert not deliver(inbox, conn, "m-1").duplicate
    assert effects(dsn) == [("m-1", "done"), ("m-1", "done")]


def test_purge_refuses_to_run_inside_a_transaction(dsn):
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.ProgrammingError, match="not inside a transaction"):
            purge_inbox(conn, SCHEMA)


# --- real brokers -------------------------------------------------------------------------


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Iterator[str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = unique_name("inbox")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(DEADLINE)
    yield topic
    admin.delete_topics([topic])[topic].result(DEADLINE)


def read_kafka(kafka_bootstrap: str, topic: str, count: int) -> list[Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        messages: list[Any] = []
        deadline = time.monotonic() + DEADLINE * 3
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
        return messages
    finally:
        consumer.close()


def test_confluent_kafka_round_trip_through_the_inbox(dsn, kafka_bootstrap, kafka_topic):
    from confluent_kafka import Producer

    paid, refunded = str(uuid4()), str(uuid4())
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    # the relay published `paid` twice (it crashed before marking it sent)
    for message_id, body in [(paid, b"paid"), (paid, b"paid"), (refunded, b"refunded")]:
        producer.produce(
            kafka_topic, value=body, key=b"acct-1", headers=[("message_id", message_id.encode())]
        )
    assert producer.flush(DEADLINE) == 0

    inbox = Inbox(consumer="billing", schema=SCHEMA)
    messages = read_kafka(kafka_bootstrap, kafka_topic, 3)
    assert len(messages) == 3
    with psycopg.connect(dsn, autocommit=True) as conn:
        outcomes = []
        for message in messages:
            message_id = confluent_kafka_message_id(message)
            conn.execute("SELECT set_config('test.message_id', %s, false)", (message_id,))
            outcomes.append(inbox.process(conn, message_id, effect(message.value().decode())))
    assert [o.duplicate for o in outcomes] == [False, True, False]
    assert sorted(effects(dsn)) == sorted([(paid, "paid"), (refunded, "refunded")])


def test_pika_round_trip_with_a_crash_before_the_ack(dsn, amqp_url, unique_name):
    import pika

    queue = unique_name("inbox")
    message_id = str(uuid4())
    inbox = Inbox(consumer="billing", schema=SCHEMA)

    def handle(channel: Any) -> tuple[bool, bool, int]:
        method, properties, _body = channel.basic_get(queue, auto_ack=False)
        assert method is not None, "no message in the queue"
        found = pika_message_id(properties)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT set_config('test.message_id', %s, false)", (found,))
            outcome = inbox.process(conn, found, effect())
        return outcome.duplicate, method.redelivered, method.delivery_tag

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, arguments={"x-expires": 60_000})
        channel.confirm_delivery()
        channel.basic_publish(
            "",
            queue,
            b'{"amount": 5}',
            pika.BasicProperties(message_id=message_id, delivery_mode=2),
        )
        assert handle(channel)[:2] == (False, False)
    finally:
        connection.close()  # the consumer dies after the commit, before basic_ack

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        duplicate, redelivered, delivery_tag = handle(channel)
        assert (duplicate, redelivered) == (True, True)
        channel.basic_ack(delivery_tag)  # acked only now: the database already has it
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
        channel.queue_delete(queue)
    finally:
        connection.close()
    assert effects(dsn) == [(message_id, "done")]


def test_aiokafka_round_trip_through_the_async_inbox(dsn, kafka_bootstrap, kafka_topic):
    aiokafka = pytest.importorskip("aiokafka")
    from confluent_kafka import Producer

    from relay.inbox import aiokafka_message_id

    message_id = str(uuid4())
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for _ in range(2):
        producer.produce(kafka_topic, value=b"paid", headers=[("message_id", message_id.encode())])
    assert producer.flush(DEADLINE) == 0
    inbox = AsyncInbox(consumer="billing", schema=SCHEMA)

    async def apply(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("INSERT INTO effects VALUES (%s, 'aiokafka')", (message_id,))

    async def scenario() -> list[bool]:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partition = aiokafka.TopicPartition(kafka_topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                duplicates = []
                for _ in range(2):
                    record = await asyncio.wait_for(consumer.getone(), DEADLINE)
                    outcome = await inbox.process(conn, aiokafka_message_id(record), apply)
                    duplicates.append(outcome.duplicate)
                return duplicates
        finally:
            await consumer.stop()

    assert asyncio.run(scenario()) == [False, True]
    assert effects(dsn) == [(message_id, "aiokafka")]


def test_aio_pika_round_trip_through_the_async_inbox(dsn, amqp_url, unique_name):
    aio_pika = pytest.importorskip("aio_pika")

    from relay.inbox import aio_pika_message_id

    queue_name = unique_name("inbox")
    message_id = str(uuid4())
    inbox = AsyncInbox(consumer="billing", schema=SCHEMA)

    async def apply(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("INSERT INTO effects VALUES (%s, 'aio-pika')", (message_id,))

    async def scenario() -> list[bool]:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, arguments={"x-expires": 60_000})
            for _ in range(2):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"paid", message_id=message_id), routing_key=queue_name
                )
            duplicates = []
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for _ in range(2):
                    message = await queue.get(timeout=DEADLINE)
                    outcome = await inbox.process(conn, aio_pika_message_id(message), apply)
                    await message.ack()  # after the database commit
                    duplicates.append(outcome.duplicate)
            await queue.delete()
            return duplicates

    assert asyncio.run(scenario()) == [False, True]
    assert effects(dsn) == [(message_id, "aio-pika")]
