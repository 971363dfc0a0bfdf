"""The latency floor: what the broker and the measuring consumer add with no relay at all.

A producer in this process publishes single messages at the same rate, with the same
safe settings as the connectors (Kafka: acks=all, idempotence, lz4, linger.ms=1; RabbitMQ:
persistent, mandatory, publisher confirms); latency is arrival at the same consumer minus
the moment of the publish call, and, beside it, the broker's confirm minus that moment
(Kafka's delivery reports are served at the next send, within 1 ms at 1,000 msg/s). A
relay's latency can never be below this line.
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
    confirmed: dict[int, float] = {}
    pool = body_pool()
    try:
        target.start_reader(lambda value, at: arrivals.setdefault(orjson.loads(value)["n"], at))
        publish, finish = _publisher(stack, broker, target, confirmed)
        interval, next_at = 1 / rate, time.monotonic()
        end = next_at + warmup + seconds
        n = 0
        while next_at < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            now = time.time()
            publish(n, target.topic, f"customer-{n % 100:03d}", event_text(pool, n, now).encode())
            sent[n] = now
            n += 1
        finish()
        wait_until(lambda: len(arrivals) >= n, 15)
    finally:
        target.close()
    skip = int(warmup * rate)
    values = sorted((arrivals[i] - sent[i]) * 1000 for i in range(skip, n) if i in arrivals)
    confirms = sorted((confirmed[i] - sent[i]) * 1000 for i in range(skip, n) if i in confirmed)
    by_broker = percentiles(confirms)
    return {
        "rate": rate,
        "measured_messages": n - skip,
        "missing": n - skip - len(values),
        **percentiles(values),
        "confirm_p50_ms": by_broker["p50_ms"],
        "confirm_p99_ms": by_broker["p99_ms"],
        "latencies_ms": [round(v, 3) for v in values],
    }


def _publisher(stack: Stack, broker: str, target: Any, confirmed: dict[int, float]) -> Any:
    """(publish(n, topic, key, value), finish); notes in ``confirmed`` when the broker
    confirmed message ``n``."""
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

        def produce(n: int, topic: str, key: str, value: bytes) -> None:
            def report(err: Any, _msg: Any) -> None:
                if err is None:
                    confirmed[n] = time.time()

            producer.produce(topic, value, key.encode(), on_delivery=report)
            producer.poll(0)

        return produce, lambda: producer.flush(10)
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()

    def publish(n: int, topic: str, key: str, value: bytes) -> None:
        properties = pika.BasicProperties(delivery_mode=2, headers={"key": key})
        channel.basic_publish(target.exchange, topic, value, properties, mandatory=True)
        confirmed[n] = time.time()  # with confirms on, basic_publish waits for the confirm

    return publish, connection.close
