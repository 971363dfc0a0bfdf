"""The latency floor: what the broker and the measuring consumer add with no relay at all.

A producer in this process publishes single messages at the same rate, with the same
safe settings as the connectors (Kafka: acks=all, idempotence, lz4, linger.ms=1; RabbitMQ:
persistent, mandatory, publisher confirms); latency is arrival at the same consumer minus
the moment of the publish call. A relay's latency can never be below this line.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from benchmarks.payloads import body_pool, event_text
from benchmarks.stack import Stack, wait_until
from benchmarks.workloads import percentiles


def latency_floor(
    stack: Stack, broker: str, *, rate: float, seconds: float, warmup: float
) -> dict[str, Any]:
    target = stack.target(broker)
    arrivals: dict[int, float] = {}
    sent: dict[int, float] = {}
    pool = body_pool()
    try:
        target.start_reader(lambda value, at: arrivals.setdefault(orjson.loads(value)["n"], at))
        publish, finish = _publisher(stack, broker, target)
        interval, next_at = 1 / rate, time.monotonic()
        end = next_at + warmup + seconds
        n = 0
        while next_at < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            now = time.time()
            publish(target.topic, f"customer-{n % 100:03d}", event_text(pool, n, now).encode())
            sent[n] = now
            n += 1
        finish()
        wait_until(lambda: len(arrivals) >= n, 15)
    finally:
        target.close()
    skip = int(warmup * rate)
    values = sorted((arrivals[i] - sent[i]) * 1000 for i in range(skip, n) if i in arrivals)
    return {
        "rate": rate,
        "measured_messages": n - skip,
        "missing": n - skip - len(values),
        **percentiles(values),
        "latencies_ms": [round(v, 3) for v in values],
    }


def _publisher(stack: Stack, broker: str, target: Any) -> tuple[Any, Any]:
    if broker == "kafka":
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": stack.kafka_bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "compression.type": "lz4",
                "linger.ms": 1,
            }
        )

        def produce(topic: str, key: str, value: bytes) -> None:
            producer.produce(topic, value, key.encode())
            producer.poll(0)

        return produce, lambda: producer.flush(10)
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()

    def publish(topic: str, key: str, value: bytes) -> None:
        properties = pika.BasicProperties(delivery_mode=2, headers={"key": key})
        channel.basic_publish(target.exchange, topic, value, properties, mandatory=True)

    return publish, connection.close
