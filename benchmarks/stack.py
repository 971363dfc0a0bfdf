"""The services a benchmark runs against, and how to count what reached the broker.

PostgreSQL is a private cluster with production-like durability (``fsync=on``,
``full_page_writes=on``; writers commit with ``synchronous_commit=on``). Kafka is a private
Tansu broker (in-memory storage); RabbitMQ a private node (durable queue, persistent
messages, publisher confirms), unless URLs are given. Every run gets a fresh database and
a fresh topic or exchange, so no run inherits another's bloat or messages.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg.conninfo import conninfo_to_dict

from relay.migrations import migrate
from tests.support.services import PrivateRabbitMQ, TansuBroker, ThrowawayPostgres

KAFKA_PARTITIONS = 8
POSTGRES_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
}


class Target(Protocol):
    """One broker destination for one run: where the relay publishes, what arrived."""

    connector: str
    topic: str

    def relay_args(self) -> list[str]: ...
    def delivered(self) -> int: ...
    def start_reader(self, on_payload: Any) -> None: ...
    def close(self) -> None: ...


# --- PostgreSQL ----------------------------------------------------------------------------


def start_postgres(extra: dict[str, str] | None = None) -> ThrowawayPostgres:
    pg = ThrowawayPostgres(settings={**POSTGRES_SETTINGS, **(extra or {})})
    pg.__enter__()
    return pg


def fresh_database(pg: ThrowawayPostgres) -> str:
    """A new database with the outbox schema migrated in; returns its DSN."""
    dsn = pg.create_database(f"bench_{secrets.token_hex(4)}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
    return dsn


def drop_database(pg: ThrowawayPostgres, dsn: str) -> None:
    """Drop a run's database (and its replication slot): big backlogs fill the disk."""
    pg.drop_database(conninfo_to_dict(dsn)["dbname"])


# --- Kafka ---------------------------------------------------------------------------------


class KafkaTarget:
    """A fresh topic of ``KAFKA_PARTITIONS`` partitions. ``delivered()`` reads the topic with
    a consumer (Tansu's high watermarks count record batches, not records), started on first
    use only: serving it costs Tansu CPU that the relay would otherwise have."""

    connector = "kafka"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = f"bench-{secrets.token_hex(4)}"
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        admin.create_topics([NewTopic(self.topic, KAFKA_PARTITIONS, 1)])[self.topic].result(15)
        self._wait_for_metadata(admin)
        self._partitions = [TopicPartition(self.topic, p) for p in range(KAFKA_PARTITIONS)]
        self._reader: _KafkaReader | None = None

    def relay_args(self) -> list[str]:
        return ["--connector", "kafka", "--kafka-bootstrap", self.bootstrap]

    def delivered(self) -> int:
        if self._reader is None:
            self._reader = _KafkaReader(self.bootstrap, self._partitions)
        return self._reader.count

    def start_reader(self, on_payload: Any) -> None:
        self.delivered()
        assert self._reader is not None
        self._reader.on_payload = on_payload

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})
        with contextlib.suppress(KafkaException):
            admin.delete_topics([self.topic], request_timeout=5)[self.topic].result(10)

    def _wait_for_metadata(self, admin: AdminClient) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            found = admin.list_topics(self.topic, timeout=5).topics.get(self.topic)
            if found is not None and found.error is None and len(found.partitions) >= 1:
                return
            time.sleep(0.05)
        raise TimeoutError(f"topic {self.topic} did not appear in the metadata")


def _consumer_settings(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{secrets.token_hex(4)}",  # required, never joined: assign()
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        # Tansu answers a fetch only when this runs out (Apache Kafka answers as soon as a
        # byte is there). At 1 ms, an idle consumer kept 23 % of a core busy in Tansu, and
        # under the latency workload Tansu fell seconds behind: the direct producer's
        # arrival p99 was 14-17 s and its confirm p99 34-66 ms, against 64-87 ms and
        # 11-12 ms at 10 ms. 10 ms costs an idle Tansu 11 % of a core and adds at most
        # 10 ms (5 on average) to an arrival; the confirm, which the targets judge, is
        # timed by the producer and not by this consumer.
        "fetch.wait.max.ms": 10,
        "fetch.min.bytes": 1,
    }


class _KafkaReader:
    """A thread that counts what arrives and, once ``on_payload`` is set, hands it every
    value with its arrival time."""

    def __init__(self, bootstrap: str, partitions: list[TopicPartition]) -> None:
        self.count = 0
        self.on_payload: Any = None
        self._consumer = Consumer(_consumer_settings(bootstrap))
        self._consumer.assign(
            [TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in partitions]
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # consume() waits for a full batch or its timeout; poll() returns on the first
            # message, and what else is there comes without waiting
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            now, on_payload = time.time(), self.on_payload
            messages = [first, *self._consumer.consume(10_000, timeout=0)]
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    continue
                self.count += 1
                if on_payload is not None:
                    on_payload(message.value(), now)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        self._consumer.close()


# --- RabbitMQ ------------------------------------------------------------------------------


class RabbitMQTarget:
    """A fresh durable topic exchange with one durable queue bound to every routing key;
    counts the queue's messages."""

    connector = "rabbitmq"
    # Classic queue storage version 2: "highly recommended for all new deployments" since
    # 3.13, the only one from 4.3. The Debian 12 package (3.10) declares version 1 unless
    # asked, so a benchmark on it would measure a storage RabbitMQ has since removed.
    queue_arguments: dict[str, Any] = {"x-queue-version": 2}

    def __init__(self, url: str) -> None:
        import pika  # only the RabbitMQ runs need pika loaded

        self._pika = pika
        self.url = url
        self.topic = f"bench-{secrets.token_hex(4)}"
        self.exchange = f"{self.topic}-x"
        self.queue = f"{self.topic}-q"
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = self._connection.channel()
        channel.exchange_declare(self.exchange, "topic", durable=True)
        channel.queue_declare(self.queue, durable=True, arguments=self.queue_arguments)
        channel.queue_bind(self.queue, self.exchange, routing_key="#")
        self._channel = channel
        self._reader: _RabbitReader | None = None

    def relay_args(self) -> list[str]:
        return ["--connector", "rabbitmq", "--amqp-url", self.url, "--amqp-exchange", self.exchange]

    def delivered(self) -> int:
        if self._reader is not None:
            return self._reader.count
        frame = self._channel.queue_declare(
            self.queue, durable=True, passive=True, arguments=self.queue_arguments
        )
        return int(frame.method.message_count)

    def start_reader(self, on_payload: Any) -> None:
        self._reader = _RabbitReader(self._pika, self.url, self.queue, on_payload)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
        with contextlib.suppress(Exception):
            self._channel.queue_delete(self.queue)
            self._channel.exchange_delete(self.exchange)
        with contextlib.suppress(Exception):
            self._connection.close()


class _RabbitReader:
    """A consumer thread (auto-ack) with its own connection."""

    def __init__(self, pika: Any, url: str, queue: str, on_payload: Any) -> None:
        self.count = 0
        self._pika, self._url, self._queue = pika, url, queue
        self._on_payload = on_payload
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rabbit-reader", daemon=True)
        self._thread.start()
        self._ready.wait(15)

    def _run(self) -> None:
        connection = self._pika.BlockingConnection(self._pika.URLParameters(self._url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2000)

        def deliver(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
            self.count += 1
            self._on_payload(body, time.time())

        channel.basic_consume(self._queue, deliver, auto_ack=True)
        self._ready.set()
        while not self._stopping.is_set():
            connection.process_data_events(time_limit=0.05)
        connection.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)


# --- the whole stack -----------------------------------------------------------------------


@dataclass
class Stack:
    """The running services of one benchmark invocation."""

    pg: ThrowawayPostgres
    kafka_bootstrap: str | None = None
    amqp_url: str | None = None
    _owned: list[Any] = field(default_factory=list)

    def target(self, broker: str) -> Target:
        if broker == "kafka":
            assert self.kafka_bootstrap is not None
            return KafkaTarget(self.kafka_bootstrap)
        assert self.amqp_url is not None
        return RabbitMQTarget(self.amqp_url)


@contextlib.contextmanager
def running_stack(
    brokers: list[str],
    *,
    kafka_bootstrap: str | None = None,
    amqp_url: str | None = None,
    pg_settings: dict[str, str] | None = None,
) -> Iterator[Stack]:
    owned: list[Any] = []
    try:
        pg = start_postgres(pg_settings)
        owned.append(pg)
        if "kafka" in brokers and kafka_bootstrap is None:
            tansu = TansuBroker()
            tansu.__enter__()
            owned.append(tansu)
            kafka_bootstrap = tansu.bootstrap
        if "rabbitmq" in brokers and amqp_url is None:
            rabbit = PrivateRabbitMQ()
            rabbit.__enter__()
            owned.append(rabbit)
            amqp_url = rabbit.url
        yield Stack(pg, kafka_bootstrap, amqp_url, owned)
    finally:
        for service in reversed(owned):
            service.cleanup()


def service_pids(stack: Stack) -> dict[str, int]:
    """PIDs of the services this invocation started (for CPU figures of the whole box)."""
    return {type(s).__name__: s.pid for s in stack._owned if s.pid is not None}


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
