"""BrokerHarness over a Kafka-protocol broker (Kafka itself, or Tansu in the tests).

Topics are created with the AdminClient before use: the harness never relies on the
broker creating topics on first produce. Reads use ``assign()`` on explicit partitions,
never a consumer group (groups join slowly on Tansu), and each read continues where the
previous read of that topic stopped, so reads behave like consuming from a queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from typing import Protocol

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from relay.config import RelayConfig
from relay.connector import Connector, load_connector
from relay.model import OutboxMessage
from relay.testing.conformance import Received

# Kafka refuses this name (characters outside [a-zA-Z0-9._-]) with INVALID_TOPIC_EXCEPTION,
# whether or not it creates topics on first use; Tansu does the same.
INVALID_TOPIC = "not a valid topic!"
_ADMIN_TIMEOUT = 15.0
LIBRDKAFKA_MAX_MESSAGE = 1_000_000  # message.max.bytes, librdkafka's default


class BrokerNode(Protocol):
    """The part of ``tests.support.services.TansuBroker`` the harness drives."""

    def kill(self) -> None: ...
    def start(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class KafkaHarness:
    """Creates topics and reads what the connector published; tests only."""

    connector_name = "kafka"

    def __init__(self, bootstrap: str, broker: BrokerNode | None = None) -> None:
        self.bootstrap = bootstrap
        self._broker = broker
        self._topics: dict[str, int] = {}  # name -> partitions, to recreate after a restart
        self._positions: dict[str, dict[int, int]] = {}  # next offset to read per partition

    def configure(self, base: RelayConfig) -> RelayConfig:
        options = {**base.connector_options, "bootstrap.servers": self.bootstrap}
        return dataclasses.replace(base, connector="kafka", connector_options=options)

    def new_topic(self, partitions: int = 1) -> str:
        topic = f"test-{uuid.uuid4().hex[:12]}"
        self.create_topic(topic, partitions)
        return topic

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` (no error if it exists) and wait until its metadata shows it."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        future = admin.create_topics([NewTopic(topic, partitions, 1)])[topic]
        try:
            future.result(_ADMIN_TIMEOUT)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        self._topics[topic] = partitions
        self._positions[topic] = {}
        self._wait_for_metadata(admin, topic, partitions)

    def connector(self, *, publish_timeout: float) -> Connector:
        """The connector as the relay builds it: by name, through its entry point."""
        base = RelayConfig(dsn="unused", publish_timeout=publish_timeout)
        return load_connector(self.configure(base))

    def refused_before_sending(self, topic: str, key: str) -> OutboxMessage | None:
        """A record over librdkafka's message.max.bytes: produce() refuses it."""
        return OutboxMessage(uuid.uuid4(), topic, key, b"x" * (LIBRDKAFKA_MAX_MESSAGE + 1))

    def unroutable_topic(self) -> str | None:
        return INVALID_TOPIC

    def read(self, topic: str, count: int, timeout: float) -> list[Received]:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"harness-{uuid.uuid4().hex[:8]}",  # required, never joined
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            return self._consume(consumer, topic, count, timeout)
        finally:
            consumer.close()

    def stop_broker(self) -> None:
        # SIGKILL, as a crash would: quicker than SIGTERM, which Tansu answers by waiting
        # for its clients to disconnect.
        self._require_broker().kill()

    def start_broker(self) -> None:
        """Start the broker again and recreate this harness's topics: a broker with
        in-memory storage (Tansu's default) comes back empty."""
        self._require_broker().start()
        for topic, partitions in list(self._topics.items()):
            self.create_topic(topic, partitions)

    def pause_broker(self) -> None:
        self._require_broker().pause()

    def resume_broker(self) -> None:
        self._require_broker().resume()

    def cleanup(self) -> None:
        """Delete the topics this harness created (best effort)."""
        if not self._topics:
            return
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.delete_topics(list(self._topics), request_timeout=5)
        for future in futures.values():
            # the broker may be down or the topic already gone: nothing left to clean
            with contextlib.suppress(KafkaException):
                future.result(_ADMIN_TIMEOUT)
        self._topics.clear()

    def _consume(
        self, consumer: Consumer, topic: str, count: int, timeout: float
    ) -> list[Received]:
        positions = self._positions.setdefault(topic, {})
        partitions = range(self._topics.get(topic, 1))
        consumer.assign(
            [TopicPartition(topic, p, positions.get(p, OFFSET_BEGINNING)) for p in partitions]
        )
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(received) < count and time.monotonic() < deadline:
            message = consumer.poll(min(0.2, max(deadline - time.monotonic(), 0.0)))
            if message is None:
                continue
            if message.error() is not None:
                raise KafkaException(message.error())
            received.append(_received(message))
            positions[message.partition() or 0] = (message.offset() or 0) + 1
        return received

    def _wait_for_metadata(self, admin: AdminClient, topic: str, partitions: int) -> None:
        deadline = time.monotonic() + _ADMIN_TIMEOUT
        while time.monotonic() < deadline:
            found = admin.list_topics(topic, timeout=5).topics.get(topic)
            if found is not None and found.error is None and len(found.partitions) >= partitions:
                return
            time.sleep(0.05)  # a poll with a deadline: metadata has no wait-for API
        raise TimeoutError(f"topic {topic} did not appear in the metadata within the deadline")

    def _require_broker(self) -> BrokerNode:
        if self._broker is None:
            pytest.skip("needs a private broker; this harness uses a shared one")
        return self._broker


def _received(message: KafkaMessage) -> Received:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = {name: _text(value) for name, value in pairs}
    message_id = headers.pop("message_id", None)
    content_type = headers.pop("content_type", None)
    key = message.key()
    return Received(
        message_id=message_id,
        topic=message.topic() or "",
        key=None if key is None else key.decode(),
        value=message.value(),
        headers=headers,
        content_type=content_type,
    )


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
