"""The baseline every drain is compared with: the batch relay a good tutorial teaches.

    python -m benchmarks.tutorial_relay --dsn DSN --kafka-bootstrap H:P [--batch 100]
        [--idle-sleep 0.1] [--progress FILE]

In one transaction: ``SELECT ... LIMIT 100 FOR UPDATE SKIP LOCKED``; produce every row;
``flush()`` once; one ``UPDATE ... SET sent_at = now() WHERE seq = ANY(...)``; commit.
When a poll finds fewer rows than a batch, it sleeps 100 ms before the next (the usual
choice: at light traffic that is what it costs, and what its latency is made of). The
producer is as safe as the relay's (``acks=all``, idempotence, lz4), so the difference is
the design, not the durability. It reads the claim through the outbox's pending index
(``sent_at IS NULL AND parked_at IS NULL``), as a tutorial's own table would have one.
Kafka only. Stops on SIGTERM/SIGINT after the batch in hand.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

import psycopg

from benchmarks.naive_relay import Progress

CLAIM = (
    "SELECT seq, id::text, topic, key, payload::text FROM outbox.messages"
    " WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED"
)
MARK_SENT = (
    "UPDATE outbox.messages SET sent_at = now(), attempts = attempts + 1 WHERE seq = ANY(%s)"
)


class BatchSender:
    """Produce a batch, flush once, raise if any message was not delivered."""

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
        self._errors: list[Any] = []

    def _report(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def send_all(self, rows: list[tuple[Any, ...]]) -> None:
        self._errors.clear()
        for _seq, message_id, topic, key, payload in rows:
            self._producer.produce(
                topic,
                payload.encode(),
                None if key is None else key.encode(),
                headers=[("message_id", message_id.encode())],
                on_delivery=self._report,
            )
        self._producer.flush(30)
        if self._errors:
            raise RuntimeError(f"not delivered: {self._errors[0]}")

    def close(self) -> None:
        self._producer.flush(10)


def relay(
    dsn: str, sender: BatchSender, batch: int, idle_sleep: float, stopping: list[bool],
    progress: Progress,
) -> int:  # fmt: skip
    with psycopg.connect(dsn) as conn:
        while not stopping:
            with conn.transaction():
                rows = conn.execute(CLAIM, (batch,), prepare=True).fetchall()
                if rows:
                    sender.send_all(rows)
                    conn.execute(MARK_SENT, ([r[0] for r in rows],), prepare=True)
            progress.add(len(rows))
            if len(rows) < batch:
                progress.write()
                time.sleep(idle_sleep)
    progress.write()
    return progress.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--connector", choices=("kafka",), default="kafka")
    parser.add_argument("--kafka-bootstrap", default="localhost:9092")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--idle-sleep", type=float, default=0.1, help="seconds")
    parser.add_argument("--progress", help="keep the count of confirmed messages in this file")
    args = parser.parse_args()
    stopping: list[bool] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    sender = BatchSender(args.kafka_bootstrap)
    try:
        sent = relay(
            args.dsn, sender, args.batch, args.idle_sleep, stopping, Progress(args.progress)
        )
    finally:
        sender.close()
    print(f"tutorial relay stopped; {sent} messages sent", flush=True)


if __name__ == "__main__":
    main()
