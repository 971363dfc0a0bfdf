"""The naive outbox relay every comparison is made against: one row at a time.

    python -m benchmarks.naive_relay --dsn DSN --connector kafka --kafka-bootstrap H:P
    python -m benchmarks.naive_relay --dsn DSN --connector rabbitmq --amqp-url URL \
        --amqp-exchange X

The loop most hand-written outbox relays start as: in one transaction, ``SELECT ... LIMIT
100 FOR UPDATE SKIP LOCKED``; then for each row produce it, wait for the broker
(``flush()`` / a publisher confirm) and ``UPDATE`` that row as sent; commit. The broker
settings are as safe as the real relay's (Kafka ``acks=all`` + idempotence + lz4;
RabbitMQ confirms, persistent, mandatory), so the difference is the design, not the
durability. The payload is fetched as text, which is cheaper than decoding the jsonb.
Stops on SIGTERM/SIGINT after the batch in hand.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import psycopg

CLAIM = (
    "SELECT seq, id::text, topic, key, payload::text FROM outbox.messages"
    " WHERE sent_at IS NULL ORDER BY seq LIMIT 100 FOR UPDATE SKIP LOCKED"
)
MARK_SENT = "UPDATE outbox.messages SET sent_at = now(), attempts = attempts + 1 WHERE seq = %s"
IDLE_POLL = 0.1  # a common choice: a tenth of a second between empty polls
PROGRESS_EVERY = 0.02


class KafkaSender:
    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "compression.type": "lz4",
            }
        )
        self._error: Any = None

    def _report(self, err: Any, _msg: Any) -> None:
        self._error = err

    def send(self, topic: str, key: str | None, payload: bytes, message_id: str) -> None:
        self._error = None
        self._producer.produce(
            topic,
            payload,
            None if key is None else key.encode(),
            headers=[("message_id", message_id.encode())],
            on_delivery=self._report,
        )
        self._producer.flush(30)
        if self._error is not None:
            raise RuntimeError(f"not delivered: {self._error}")

    def close(self) -> None:
        self._producer.flush(10)


class RabbitSender:
    def __init__(self, url: str, exchange: str) -> None:
        import pika

        self._pika = pika
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()  # basic_publish now waits for the broker's ack
        self._exchange = exchange

    def send(self, topic: str, key: str | None, payload: bytes, message_id: str) -> None:
        properties = self._pika.BasicProperties(
            message_id=message_id,
            delivery_mode=2,
            content_type="application/json",
            headers={"key": key},
        )
        self._channel.basic_publish(self._exchange, topic, payload, properties, mandatory=True)

    def close(self) -> None:
        self._connection.close()


class Progress:
    """How many messages the broker confirmed, in a file the benchmark reads (at most every
    PROGRESS_EVERY seconds): the counterpart of outbox-relay's own metrics, so neither
    relay is counted by a consumer that would load the broker."""

    def __init__(self, path: str | None) -> None:
        self.path, self.count, self._written_at = path, 0, 0.0

    def add(self, count: int = 1) -> None:
        self.count += count
        if self.path and time.monotonic() - self._written_at >= PROGRESS_EVERY:
            self.write()

    def write(self) -> None:
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as out:
                out.write(str(self.count))
            os.replace(tmp, self.path)
            self._written_at = time.monotonic()


def relay(dsn: str, sender: Any, stopping: list[bool], progress: Progress) -> int:
    with psycopg.connect(dsn) as conn:
        while not stopping:
            with conn.transaction():
                rows = conn.execute(CLAIM).fetchall()
                for seq, message_id, topic, key, payload in rows:
                    sender.send(topic, key, payload.encode(), message_id)
                    conn.execute(MARK_SENT, (seq,))
                    progress.add()
            if not rows:
                progress.write()
                time.sleep(IDLE_POLL)
    progress.write()
    return progress.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--connector", choices=("kafka", "rabbitmq"), default="kafka")
    parser.add_argument("--kafka-bootstrap", default="localhost:9092")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--amqp-exchange", default="outbox")
    parser.add_argument("--progress", help="keep the count of confirmed messages in this file")
    args = parser.parse_args()
    stopping: list[bool] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    if args.connector == "kafka":
        sender: Any = KafkaSender(args.kafka_bootstrap)
    else:
        sender = RabbitSender(args.amqp_url, args.amqp_exchange)
    try:
        sent = relay(args.dsn, sender, stopping, Progress(args.progress))
    finally:
        sender.close()
    print(f"naive relay stopped; {sent} messages sent", flush=True)


if __name__ == "__main__":
    main()
