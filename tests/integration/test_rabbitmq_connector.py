"""The RabbitMQ connector against a real RabbitMQ: the session's node (``amqp_url``) for
behaviour, a private node (``private_rabbitmq``) for faults that would hurt other users.
Each test has its own exchange and queues, deleted afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pika
import pytest

from connectors.rabbitmq import RabbitMQConnector
from relay.config import RelayConfig
from relay.errors import BrokerUnavailableError, ConfigError, PermanentError
from relay.model import OutboxMessage, Outcome, OutcomeKind
from relay.refusals import HELD_BACK
from tests.support.rabbitmq_harness import RabbitMQHarness, unique_exchange
from tests.support.services import PrivateRabbitMQ

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


@pytest.fixture
def harness(amqp_url: str) -> Iterator[RabbitMQHarness]:
    harness = RabbitMQHarness(amqp_url, unique_exchange())
    try:
        yield harness
    finally:
        harness.cleanup()


def connector_for(harness: RabbitMQHarness, *, url_query: str = "") -> RabbitMQConnector:
    base = RelayConfig(dsn="postgresql://unused", relay_name=f"test-{uuid.uuid4().hex[:6]}")
    config = dataclasses.replace(harness.configure(base), connect_timeout=3.0)
    if url_query:
        url = config.connector_options["url"]
        url += ("&" if "?" in url else "?") + url_query
        config = dataclasses.replace(config, connector_options={**config.connector_options,
                                                                "url": url})
    return RabbitMQConnector.from_config(config.validate())


def publish_once(connector: RabbitMQConnector, batch: list[OutboxMessage]) -> list[Outcome]:
    async def scenario() -> list[Outcome]:
        await connector.open()
        try:
            return await connector.publish(batch, timeout=TIMEOUT)
        finally:
            await connector.close(timeout=TIMEOUT)

    return asyncio.run(scenario())


def message(topic: str, key: str | None, payload: bytes | None, **fields: Any) -> OutboxMessage:
    return OutboxMessage(uuid.uuid4(), topic, key, payload, **fields)


def kinds(outcomes: Sequence[Outcome]) -> list[OutcomeKind]:
    return [o.kind for o in outcomes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_batch_is_delivered_with_ids_keys_payloads_headers(harness: RabbitMQHarness) -> None:
    json_topic, binary_topic = harness.new_topic(), harness.new_topic()
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    batch = [
        message(json_topic, "order-1", b'{"n":1}', headers={"trace": "t1"}, created_at=created),
        message(binary_topic, None, bytes(range(256)), content_type="application/octet-stream"),
        message(json_topic, "order-2", b'{"n":2}', headers={"a": "1", "b": "2"}),
    ]

    async def scenario() -> list[OutcomeKind]:
        connector = connector_for(harness)
        await connector.open()
        try:
            return kinds(await connector.publish(batch, timeout=TIMEOUT))
        finally:
            await connector.close(timeout=TIMEOUT)

    assert asyncio.run(scenario()) == [OutcomeKind.DELIVERED] * 3
    got = harness.read(json_topic, 2, TIMEOUT) + harness.read(binary_topic, 1, TIMEOUT)
    sent = [batch[0], batch[2], batch[1]]
    assert [r.message_id for r in got] == [str(m.id) for m in sent]
    assert [r.key for r in got] == [m.key for m in sent]
    assert [r.value for r in got] == [m.payload for m in sent]
    assert [r.headers for r in got] == [dict(m.headers) for m in sent]
    assert [r.content_type for r in got] == [m.content_type for m in sent]
    assert [r.topic for r in got] == [json_topic, json_topic, binary_topic]
    assert [r.timestamp for r in got] == [int(created.timestamp()), None, None]
    assert all(r.persistent for r in got)


def test_bodies_larger_than_a_frame_arrive_whole(harness: RabbitMQHarness) -> None:
    # 131,072 bytes is RabbitMQ's default frame_max: these bodies span one to four frames.
    topic = harness.new_topic()
    sizes = [0, 1, 131_064, 131_065, 400_000]
    batch = [message(topic, "k", os.urandom(size) if size else None) for size in sizes]
    outcomes = publish_once(connector_for(harness), batch)
    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * len(sizes)
    got = harness.read(topic, len(sizes), TIMEOUT)
    assert [r.value for r in got] == [m.payload or b"" for m in batch]


def test_bodies_are_split_at_the_negotiated_frame_size(harness: RabbitMQHarness) -> None:
    # The client asks for 8,192-byte frames; RabbitMQ agrees to the smaller of the two.
    topic = harness.new_topic()
    sizes = [8_183, 8_184, 8_185, 20_000]
    batch = [message(topic, "k", os.urandom(size)) for size in sizes]
    outcomes = publish_once(connector_for(harness, url_query="frame_max=8192"), batch)
    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * len(sizes)
    assert [r.value for r in harness.read(topic, len(sizes), TIMEOUT)] == [m.payload for m in batch]


def test_headers_larger_than_a_frame_are_permanent_and_hold_back_their_key(
    harness: RabbitMQHarness,
) -> None:
    # RabbitMQ would close the connection on such a header frame, batch after batch. The
    # key's later message waits (it would overtake the refused one); other keys flow.
    topic = harness.new_topic()
    big = message(topic, "k", b"big", headers={"trace": "t" * 140_000})
    batch = [message(topic, "k", b"0"), big, message(topic, "k", b"2"), message(topic, "o", b"3")]
    outcomes = publish_once(connector_for(harness), batch)
    assert kinds(outcomes) == [OutcomeKind.DELIVERED, OutcomeKind.PERMANENT,
                               OutcomeKind.RETRYABLE, OutcomeKind.DELIVERED]  # fmt: skip
    assert outcomes[1].error is not None and "frame" in outcomes[1].error
    assert outcomes[2] == HELD_BACK
    ids = [r.message_id for r in harness.read(topic, 3, 1.0)]
    assert ids == [str(batch[0].id), str(batch[3].id)]


def test_a_created_at_before_1970_is_sent_without_a_timestamp(harness: RabbitMQHarness) -> None:
    topic = harness.new_topic()
    batch = [message(topic, "k", b"old", created_at=datetime(1969, 7, 20, tzinfo=UTC)),
             message(topic, "k", b"new", created_at=datetime(2024, 5, 1, tzinfo=UTC))]
    outcomes = publish_once(connector_for(harness), batch)
    assert kinds(outcomes) == [OutcomeKind.DELIVERED] * 2
    got = harness.read(topic, 2, TIMEOUT)
    assert [r.timestamp for r in got] == [None, int(batch[1].created_at.timestamp())]


def test_delivery_tags_stay_in_step_after_an_unexpected_error(harness: RabbitMQHarness) -> None:
    # The broker numbers the messages it receives; a batch that raises halfway must still
    # send what it already numbered, or every later confirm settles the wrong message.
    topic = harness.new_topic()
    first = message(topic, "k", b"first")
    broken = message(topic, "k", "not bytes")  # type: ignore[arg-type]
    after = message(topic, "k", b"after")

    async def scenario() -> list[OutcomeKind]:
        connector = connector_for(harness)
        await connector.open()
        try:
            with pytest.raises(TypeError):
                await connector.publish([first, broken], timeout=TIMEOUT)
            return kinds(await connector.publish([after], timeout=TIMEOUT))
        finally:
            await connector.close(timeout=TIMEOUT)

    assert asyncio.run(scenario()) == [OutcomeKind.DELIVERED]
    ids = [r.message_id for r in harness.read(topic, 2, TIMEOUT)]
    assert ids == [str(first.id), str(after.id)]


def test_topic_longer_than_amqp_allows_is_permanent_and_holds_back_its_key(
    harness: RabbitMQHarness,
) -> None:
    # AMQP routing keys are short strings (255 bytes); such a message can never be sent.
    # Its key's later messages wait; it must not hold up the other keys of its batch.
    topic = harness.new_topic()
    batch = [message(topic, "k" if i < 3 else "other", b"%d" % i) for i in range(5)]
    batch[1] = message("é" * 128, "k", b"too long")
    outcomes = publish_once(connector_for(harness), batch)
    delivered, held = OutcomeKind.DELIVERED, OutcomeKind.RETRYABLE
    assert kinds(outcomes) == [delivered, OutcomeKind.PERMANENT, held, delivered, delivered]
    assert outcomes[1].error is not None and "255" in outcomes[1].error
    ids = [r.message_id for r in harness.read(topic, 4, 1.0)]
    assert ids == [str(m.id) for i, m in enumerate(batch) if i in (0, 3, 4)]


def test_same_key_order_holds_over_1000_messages(harness: RabbitMQHarness) -> None:
    topic = harness.new_topic()
    batch = [message(topic, f"k{i % 7}", b'{"i":%d}' % i) for i in range(1000)]

    async def scenario() -> list[OutcomeKind]:
        connector = connector_for(harness)
        await connector.open()
        try:
            outcomes: list[OutcomeKind] = []
            for start in range(0, len(batch), 250):
                chunk = batch[start : start + 250]
                outcomes += kinds(await connector.publish(chunk, timeout=TIMEOUT))
            return outcomes
        finally:
            await connector.close(timeout=TIMEOUT)

    assert asyncio.run(scenario()) == [OutcomeKind.DELIVERED] * 1000
    got = harness.read(topic, 1000, TIMEOUT)
    for key in {m.key for m in batch}:
        sent_ids = [str(m.id) for m in batch if m.key == key]
        assert [r.message_id for r in got if r.key == key] == sent_ids


def test_unroutable_message_alone_is_permanent(harness: RabbitMQHarness) -> None:
    topic, nowhere = harness.new_topic(), harness.unroutable_topic()
    assert nowhere is not None
    batch = [message(topic, "k", b"%d" % i) for i in range(5)]
    batch[2] = message(nowhere, "k", b"lost")

    async def scenario() -> list[OutcomeKind]:
        connector = connector_for(harness)
        await connector.open()
        try:
            outcomes = await connector.publish(batch, timeout=TIMEOUT)
            assert outcomes[2].error is not None and "312" in outcomes[2].error
            return kinds(outcomes)
        finally:
            await connector.close(timeout=TIMEOUT)

    delivered, lost = OutcomeKind.DELIVERED, OutcomeKind.PERMANENT
    assert asyncio.run(scenario()) == [delivered, delivered, lost, delivered, delivered]
    ids = [r.message_id for r in harness.read(topic, 4, TIMEOUT)]
    assert ids == [str(m.id) for i, m in enumerate(batch) if i != 2]


def test_nacked_messages_are_retryable(harness: RabbitMQHarness) -> None:
    topic = harness.new_topic()
    # A second, full queue on the same binding makes the broker nack (reject-publish).
    full = f"{topic}.full"
    limits = {"x-max-length": 2, "x-overflow": "reject-publish", "x-expires": 600_000}
    with pika.BlockingConnection(pika.URLParameters(harness.url)) as admin:
        channel = admin.channel()
        channel.queue_declare(full, durable=True, arguments=limits)
        channel.queue_bind(full, harness.exchange, routing_key=topic)
    batch = [message(topic, "k", b"%d" % i) for i in range(4)]

    async def scenario() -> list[OutcomeKind]:
        connector = connector_for(harness)
        await connector.open()
        try:
            return kinds(await connector.publish(batch, timeout=TIMEOUT))
        finally:
            await connector.close(timeout=TIMEOUT)

    try:
        outcomes = asyncio.run(scenario())
    finally:
        with pika.BlockingConnection(pika.URLParameters(harness.url)) as admin:
            admin.channel().queue_delete(full)
    assert outcomes == [OutcomeKind.DELIVERED] * 2 + [OutcomeKind.RETRYABLE] * 2


def test_publish_recovers_after_the_exchange_is_deleted(harness: RabbitMQHarness) -> None:
    topic = harness.new_topic()

    async def scenario() -> tuple[list[OutcomeKind], list[OutcomeKind]]:
        connector = connector_for(harness)
        await connector.open()
        try:
            with pika.BlockingConnection(pika.URLParameters(harness.url)) as admin:
                admin.channel().exchange_delete(harness.exchange)
            # The broker closes the channel (404): nothing was confirmed.
            lost = kinds(await connector.publish([message(topic, "k", b"x")], timeout=TIMEOUT))
            again = kinds(await connector.publish([message(topic, "k", b"y")], timeout=TIMEOUT))
            return lost, again
        finally:
            await connector.close(timeout=TIMEOUT)

    lost, again = asyncio.run(scenario())
    assert lost == [OutcomeKind.RETRYABLE]
    # A 404 again would be RETRYABLE: the reconnect re-declared the exchange, and the
    # message is unroutable only because the queue lost its binding with the old one.
    assert again == [OutcomeKind.PERMANENT]


def test_unreachable_broker_fails_fast_without_the_password() -> None:
    url = f"amqp://guest:{quote('s3cret-pw')}@127.0.0.1:{free_port()}/%2F"
    connector = RabbitMQConnector(url, exchange=unique_exchange(), connect_timeout=3.0)

    async def scenario() -> str:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as caught:
            await connector.open()
        assert time.monotonic() - started < 2.0
        outcomes = await connector.publish([message("t", "k", b"x")], timeout=1.0)
        assert kinds(outcomes) == [OutcomeKind.RETRYABLE]
        assert "s3cret-pw" not in (outcomes[0].error or "")
        await connector.close(timeout=1.0)
        return str(caught.value)

    text = asyncio.run(scenario())
    assert "127.0.0.1" in text
    assert "s3cret-pw" not in text


def test_wrong_password_is_permanent_and_not_echoed(amqp_url: str) -> None:
    parts = pika.URLParameters(amqp_url)
    bad_url = f"amqp://guest:wr0ng-pw-{uuid.uuid4().hex[:6]}@{parts.host}:{parts.port}/%2F"
    connector = RabbitMQConnector(bad_url, exchange=unique_exchange(), connect_timeout=3.0)

    async def scenario() -> PermanentError:
        with pytest.raises(PermanentError) as caught:
            await connector.open()
        await connector.close(timeout=1.0)
        return caught.value

    error = asyncio.run(scenario())
    assert not isinstance(error, BrokerUnavailableError)
    assert "refused the login" in str(error)
    assert "wr0ng-pw" not in str(error)


def test_exchange_of_another_type_is_a_config_error(harness: RabbitMQHarness) -> None:
    with pika.BlockingConnection(pika.URLParameters(harness.url)) as admin:
        admin.channel().exchange_declare(harness.exchange, "direct", durable=True)

    async def scenario() -> ConfigError:
        connector = connector_for(harness)
        with pytest.raises(ConfigError) as caught:
            await connector.open()
        await connector.close(timeout=1.0)
        return caught.value

    assert harness.exchange in str(asyncio.run(scenario()))


def test_close_is_harmless_before_open_and_twice(harness: RabbitMQHarness) -> None:
    async def scenario() -> None:
        connector = connector_for(harness)
        await connector.close(timeout=1.0)
        await connector.open()
        await connector.close(timeout=1.0)
        await connector.close(timeout=1.0)

    asyncio.run(scenario())


# --- faults on a private node: stop, kill, pause and alarms hit no one else -----------


@pytest.fixture
def node_harness(private_rabbitmq: PrivateRabbitMQ) -> Iterator[RabbitMQHarness]:
    harness = RabbitMQHarness(private_rabbitmq.url, unique_exchange(), node=private_rabbitmq)
    try:
        yield harness
    finally:
        harness.cleanup()


def test_publish_reconnects_after_the_broker_closes_the_connection(
    node_harness: RabbitMQHarness,
) -> None:
    topic = node_harness.new_topic()
    first = [message(topic, "k", b"before")]
    second = [message(topic, "k", b"after-%d" % i) for i in range(3)]

    async def scenario() -> tuple[list[OutcomeKind], list[OutcomeKind]]:
        connector = connector_for(node_harness)
        await connector.open()
        try:
            before = kinds(await connector.publish(first, timeout=TIMEOUT))
            # In threads, so the loop keeps running and the connector sees the close.
            assert await asyncio.to_thread(node_harness.drop_connector_connections) == 1
            await asyncio.to_thread(node_harness.wait_until_no_connector_connections, TIMEOUT)
            after = kinds(await connector.publish(second, timeout=TIMEOUT))
            return before, after
        finally:
            await connector.close(timeout=TIMEOUT)

    before, after = asyncio.run(scenario())
    assert before == [OutcomeKind.DELIVERED]
    assert after == [OutcomeKind.DELIVERED] * 3
    assert [r.value for r in node_harness.read(topic, 4, TIMEOUT)] == [
        m.payload for m in first + second
    ]


def test_publish_reconnects_after_the_broker_restarts(node_harness: RabbitMQHarness) -> None:
    topic = node_harness.new_topic()
    first = [message(topic, "k", b"before")]
    second = [message(topic, "k", b"after")]

    async def scenario() -> tuple[list[OutcomeKind], list[OutcomeKind]]:
        connector = connector_for(node_harness)
        await connector.open()
        try:
            before = kinds(await connector.publish(first, timeout=TIMEOUT))
            await asyncio.to_thread(node_harness.stop_broker)
            await asyncio.to_thread(node_harness.start_broker)
            return before, kinds(await connector.publish(second, timeout=TIMEOUT))
        finally:
            await connector.close(timeout=TIMEOUT)

    assert asyncio.run(scenario()) == ([OutcomeKind.DELIVERED], [OutcomeKind.DELIVERED])
    # The queue is durable and the messages persistent: both survive the restart.
    assert [r.value for r in node_harness.read(topic, 2, TIMEOUT)] == [b"before", b"after"]


def test_paused_broker_gives_retryable_by_the_timeout(node_harness: RabbitMQHarness) -> None:
    topic = node_harness.new_topic()
    batch = [message(topic, "k", b"%d" % i) for i in range(50)]

    async def scenario() -> tuple[list[OutcomeKind], float, list[OutcomeKind]]:
        connector = connector_for(node_harness)
        await connector.open()
        try:
            node_harness.pause_broker()
            try:
                started = time.monotonic()
                frozen = kinds(await connector.publish(batch, timeout=1.5))
                took = time.monotonic() - started
            finally:
                node_harness.resume_broker()
            later = kinds(await connector.publish(batch[:1], timeout=TIMEOUT))
            return frozen, took, later
        finally:
            await connector.close(timeout=TIMEOUT)

    frozen, took, later = asyncio.run(scenario())
    assert frozen == [OutcomeKind.RETRYABLE] * 50
    assert 1.4 < took < 3.0
    assert later == [OutcomeKind.DELIVERED]


def test_close_cuts_the_socket_of_a_broker_that_does_not_answer(
    node_harness: RabbitMQHarness,
) -> None:
    async def scenario() -> tuple[float, bool]:
        connector = connector_for(node_harness)
        await connector.open()
        connection = connector._link._connection  # type: ignore[union-attr]
        node_harness.pause_broker()
        try:
            started = time.monotonic()
            await connector.close(timeout=0.5)
            return time.monotonic() - started, connection.is_closed
        finally:
            node_harness.resume_broker()

    took, closed = asyncio.run(scenario())
    assert closed  # not left open for the garbage collector
    assert took < 2.0


def test_connection_lost_mid_batch_settles_at_once(
    node_harness: RabbitMQHarness, private_rabbitmq: PrivateRabbitMQ
) -> None:
    topic = node_harness.new_topic()
    batch = [message(topic, "k", b"%d" % i) for i in range(20)]
    node = private_rabbitmq

    async def scenario() -> tuple[list[Outcome], float, list[OutcomeKind]]:
        connector = connector_for(node_harness)
        await connector.open()
        try:
            node.pause()  # the batch goes out but no confirm can come back
            started = time.monotonic()
            waiting = asyncio.create_task(connector.publish(batch, timeout=TIMEOUT))
            await asyncio.to_thread(node.kill)
            lost, took = await waiting, time.monotonic() - started
            await asyncio.to_thread(node.start)
            # A queue declared moments before a SIGKILL may not have reached the disk
            # (seen once in a full run: the message came back unroutable), so the
            # publish after the restart goes to a queue declared after it.
            fresh = await asyncio.to_thread(node_harness.new_topic)
            after = await connector.publish([message(fresh, "k", b"x")], timeout=TIMEOUT)
            return lost, took, kinds(after)
        finally:
            await connector.close(timeout=TIMEOUT)

    lost, took, later = asyncio.run(scenario())
    assert kinds(lost) == [OutcomeKind.RETRYABLE] * 20
    assert all("connection lost" in (o.error or "") for o in lost)
    assert took < TIMEOUT / 2  # settled by the loss, not by the publish timeout
    assert later == [OutcomeKind.DELIVERED]


def test_blocked_connection_gives_retryable_not_a_hang(
    node_harness: RabbitMQHarness, private_rabbitmq: PrivateRabbitMQ
) -> None:
    topic = node_harness.new_topic()
    node = private_rabbitmq

    async def scenario() -> tuple[list[Outcome], list[Outcome], list[OutcomeKind]]:
        connector = connector_for(node_harness)
        await connector.open()
        try:
            # A memory alarm: RabbitMQ blocks every connection that publishes.
            await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0")
            try:
                first = await connector.publish([message(topic, "k", b"1")], timeout=1.5)
                second = await connector.publish([message(topic, "k", b"2")], timeout=1.5)
            finally:
                await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.4")
            third = kinds(await connector.publish([message(topic, "k", b"3")], timeout=TIMEOUT))
            return first, second, third
        finally:
            await connector.close(timeout=TIMEOUT)

    first, second, third = asyncio.run(scenario())
    assert kinds(first) == kinds(second) == [OutcomeKind.RETRYABLE]
    # Once RabbitMQ said "blocked", the connector stops writing into the connection.
    assert "blocked" in (second[0].error or "")
    assert third == [OutcomeKind.DELIVERED]


def test_user_without_configure_permission_uses_an_existing_exchange(
    node_harness: RabbitMQHarness, private_rabbitmq: PrivateRabbitMQ
) -> None:
    topic = node_harness.new_topic()  # declares the exchange as an operator would
    user, password = f"publisher-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    private_rabbitmq.ctl("add_user", user, password)
    try:
        # configure: nothing; write and read: everything
        private_rabbitmq.ctl("set_permissions", "-p", "/", user, "^$", ".*", ".*")
        url = f"amqp://{user}:{password}@127.0.0.1:{private_rabbitmq.port}/%2F"
        connector = RabbitMQConnector(url, exchange=node_harness.exchange)
        missing = RabbitMQConnector(url, exchange=unique_exchange())

        async def scenario() -> list[OutcomeKind]:
            try:
                with pytest.raises(PermanentError, match="cannot be used"):
                    await missing.open()
                await connector.open()
                return kinds(await connector.publish([message(topic, "k", b"x")], timeout=TIMEOUT))
            finally:
                await connector.close(timeout=TIMEOUT)
                await missing.close(timeout=TIMEOUT)

        assert asyncio.run(scenario()) == [OutcomeKind.DELIVERED]
    finally:
        private_rabbitmq.ctl("delete_user", user)
