"""BrokerHarness over RabbitMQ, for the connector tests and the conformance suite.

Every harness owns one exchange; each topic is a durable queue bound to it with the
topic as routing key. Queues are durable (and expire on their own if a test dies before
cleanup) so they survive a restart of a private node, and they are not exclusive
because the harness reconnects after such a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pika
import pytest
from pika import exceptions as amqp

from connectors.rabbitmq import KEY_HEADER
from relay.config import RelayConfig
from relay.connector import Connector, load_connector
from relay.model import OutboxMessage
from relay.testing.conformance import Received

T = TypeVar("T")
# Queues delete themselves this long after their last use if cleanup never ran.
QUEUE_EXPIRES_MS = 10 * 60 * 1000


class BrokerNode(Protocol):
    """The part of ``tests.support.services.PrivateRabbitMQ`` the harness drives."""

    def stop(self) -> None: ...
    def start(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def ctl(self, *args: str, timeout: float = ...) -> str: ...


def unique_exchange() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class RabbitMQHarness:
    """Reads what the connector published; blocking pika, tests only."""

    connector_name = "rabbitmq"

    def __init__(self, url: str, exchange: str, node: BrokerNode | None = None) -> None:
        self.url = url
        self.exchange = exchange
        self._node = node
        self._connection: Any = None
        self._channel: Any = None
        self._queues: dict[str, str] = {}

    def configure(self, base: RelayConfig) -> RelayConfig:
        options = {**base.connector_options, "url": self.url, "exchange": self.exchange}
        return dataclasses.replace(base, connector="rabbitmq", connector_options=options)

    def new_topic(self) -> str:
        topic = f"{self.exchange}.{uuid.uuid4().hex[:8]}"
        queue = f"{topic}.q"
        self._run(lambda channel: self._declare_queue(channel, topic, queue))
        self._queues[topic] = queue
        return topic

    def connector(self, *, publish_timeout: float) -> Connector:
        """The connector as the relay builds it: by name, through its entry point."""
        base = RelayConfig(dsn="unused", publish_timeout=publish_timeout)
        return load_connector(self.configure(base))

    def refused_before_sending(self, topic: str, key: str) -> OutboxMessage | None:
        """A header name longer than an AMQP short string (255 bytes) can hold."""
        return OutboxMessage(uuid.uuid4(), topic, key, b"{}", headers={"h" * 300: "v"})

    def unroutable_topic(self) -> str | None:
        return f"{self.exchange}.unbound.{uuid.uuid4().hex[:8]}"

    def read(self, topic: str, count: int, timeout: float) -> list[Received]:
        queue = self._queues[topic]
        return self._run(lambda channel: self._consume(channel, queue, count, timeout))

    def stop_broker(self) -> None:
        self._require_node().stop()

    def start_broker(self) -> None:
        self._require_node().start()

    def pause_broker(self) -> None:
        self._require_node().pause()

    def resume_broker(self) -> None:
        self._require_node().resume()

    def drop_connector_connections(self) -> int:
        """Have the broker close every connection a connector opened for this exchange
        (their connection_name ends with the exchange); return how many it closed."""
        names = self._connector_connection_names()
        # close_connection wants the Erlang pid as the table output prints it (the JSON
        # formatter prints another syntax it does not accept).
        table = self._ctl("list_connections", "pid", "name", "--silent")
        pids = [line.split("\t")[0] for line in table.splitlines() if line.split("\t")[-1] in names]
        for pid in pids:
            self._ctl("close_connection", pid, "closed by the test harness")
        return len(pids)

    def wait_until_no_connector_connections(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._connector_connection_names():
                return
            time.sleep(0.05)  # a poll with a deadline: rabbitmqctl has no wait-for-close
        raise TimeoutError(f"connections to {self.exchange} still open after {timeout}s")

    def _connector_connection_names(self) -> set[str]:
        listing = self._ctl("list_connections", "name", "client_properties", "--formatter", "json")
        rows = json.loads(listing or "[]")
        return {
            row["name"] for row in rows if _connection_name(row).endswith(f"-> {self.exchange}")
        }

    def _ctl(self, *args: str) -> str:
        args = ("--quiet", *args)  # only the listing: no "Listing connections ..." line
        if self._node is not None:
            return self._node.ctl(*args)
        done = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout

    def cleanup(self) -> None:
        """Delete this harness's queues and exchange, then disconnect."""
        try:
            self._run(self._delete_everything)
        finally:
            self._disconnect()

    def _declare_queue(self, channel: Any, topic: str, queue: str) -> None:
        # The connector may not have declared the exchange yet; same settings as it uses.
        channel.exchange_declare(self.exchange, "topic", durable=True)
        arguments = {"x-expires": QUEUE_EXPIRES_MS}
        channel.queue_declare(queue, durable=True, arguments=arguments)
        channel.queue_bind(queue, self.exchange, routing_key=topic)

    def _consume(self, channel: Any, queue: str, count: int, timeout: float) -> list[Received]:
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        # Manual acks: whatever arrived beyond ``count`` is requeued by cancel(), not lost.
        for method, properties, body in channel.consume(queue, inactivity_timeout=0.1):
            if method is not None:
                received.append(_received(method, properties, body))
                channel.basic_ack(method.delivery_tag)
            if len(received) >= count or time.monotonic() >= deadline:
                break
        channel.cancel()
        return received

    def _delete_everything(self, channel: Any) -> None:
        for queue in self._queues.values():
            channel.queue_delete(queue)
        channel.exchange_delete(self.exchange)
        self._queues.clear()

    def _run(self, operation: Callable[[Any], T]) -> T:
        # One reconnect: the broker may have restarted (or closed us) since last use.
        try:
            return operation(self._open_channel())
        except (amqp.AMQPConnectionError, amqp.ChannelClosed, amqp.ChannelWrongStateError):
            self._disconnect()
            return operation(self._open_channel())

    def _open_channel(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            if self._connection is None or not self._connection.is_open:
                self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self._channel = self._connection.channel()
        return self._channel

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(amqp.AMQPError):  # already dead: nothing to release
                connection.close()

    def _require_node(self) -> BrokerNode:
        if self._node is None:
            pytest.skip("needs a private RabbitMQ node; this harness uses a shared one")
        return self._node


def _received(method: Any, properties: Any, body: bytes) -> Received:
    headers = {k: _text(v) for k, v in (properties.headers or {}).items()}
    key = headers.pop(KEY_HEADER, None)
    return Received(
        message_id=properties.message_id,
        topic=method.routing_key,
        key=key,
        value=body,
        headers=headers,
        content_type=properties.content_type,
        timestamp=properties.timestamp,
        persistent=properties.delivery_mode == 2,
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _connection_name(row: dict[str, Any]) -> str:
    for name, _type, value in row.get("client_properties", []):
        if name == "connection_name":
            return str(value)
    return ""
