"""`make demo`: a throwaway PostgreSQL and Kafka-protocol broker, two relays, an
application writing orders, and a consumer — with live counts.

Everything runs on loopback and is stopped (by PID) when the demo ends or on Ctrl-C.
Set DEMO_SECONDS to write for longer (default 12).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import relay
from tests.support.services import TansuBroker, ThrowawayPostgres

COMMAND = str(Path(sys.executable).with_name("outbox-relay"))
TOPIC, PARTITIONS, KEYS = "orders", 3, 50
SECONDS = float(os.environ.get("DEMO_SECONDS", "12"))


class Counts:
    def __init__(self) -> None:
        self.written = 0
        self.received: set[str] = set()
        self.deliveries = 0
        self.latencies: list[float] = []


def write_orders(dsn: str, counts: Counts, stop: threading.Event) -> None:
    """The application: each transaction writes business data and its events together."""
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, total int)")
        conn.commit()
        while not stop.is_set():
            with conn.transaction():
                for _ in range(10):
                    order_id = uuid.uuid4()
                    customer = f"customer-{counts.written % KEYS}"
                    conn.execute("INSERT INTO orders VALUES (%s, 42)", (order_id,))
                    relay.enqueue(
                        conn,
                        topic=TOPIC,
                        key=customer,
                        payload={
                            "order": str(order_id),
                            "customer": customer,
                            "total": 42,
                            "written_at": time.time(),
                        },
                    )
                    counts.written += 1
            time.sleep(0.02)


def consume(bootstrap: str, counts: Counts, stop: threading.Event) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "demo",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    try:
        while not stop.is_set():
            for message in consumer.consume(500, timeout=0.02):
                if message.error():
                    continue
                headers = dict(message.headers() or [])
                counts.received.add(headers["message_id"].decode())
                counts.deliveries += 1
                sent = orjson.loads(message.value())["written_at"]
                counts.latencies.append(time.time() - sent)
    finally:
        consumer.close()


def create_topic(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(15)


def pending(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL"
        ).fetchone()[0]


def start_relay(dsn: str, bootstrap: str, log_dir: Path, n: int) -> subprocess.Popen[bytes]:
    log = (log_dir / f"relay-{n}.log").open("w")
    return subprocess.Popen(
        [
            COMMAND,
            "run",
            "--dsn",
            dsn,
            "--kafka-bootstrap",
            bootstrap,
            "--lease-ttl",
            "6s",
            "--publish-timeout",
            "2s",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def report(counts: Counts, dsn: str, started: float) -> None:
    elapsed = time.time() - started
    print(
        f"  {elapsed:5.1f}s  written {counts.written:6d}  pending {pending(dsn):5d}  "
        f"delivered {len(counts.received):6d}  ({counts.written / max(elapsed, 1e-9):,.0f}/s)",
        flush=True,
    )


def main() -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="outbox-demo-"))
    print("starting a throwaway PostgreSQL (wal_level=logical) and a Kafka-protocol broker...")
    with ThrowawayPostgres() as pg, TansuBroker() as kafka:
        dsn = pg.dsn
        subprocess.run([COMMAND, "migrate", "--dsn", dsn], check=True)
        create_topic(kafka.bootstrap)
        relays = [start_relay(dsn, kafka.bootstrap, log_dir, n) for n in range(2)]
        print(f"two relays running (logs in {log_dir}); writing orders for {SECONDS:.0f}s\n")
        run_demo(dsn, kafka.bootstrap, relays)
    print(f"\nstopped everything; relay logs are in {log_dir}")


def run_demo(dsn: str, bootstrap: str, relays: list[subprocess.Popen[bytes]]) -> None:
    counts, stop_writing, stop_reading = Counts(), threading.Event(), threading.Event()
    writer = threading.Thread(target=write_orders, args=(dsn, counts, stop_writing))
    reader = threading.Thread(target=consume, args=(bootstrap, counts, stop_reading))
    started = time.time()
    writer.start()
    reader.start()
    try:
        while time.time() - started < SECONDS:
            time.sleep(1)
            report(counts, dsn, started)
        stop_writing.set()
        writer.join()
        deadline = time.time() + 30
        while len(counts.received) < counts.written and time.time() < deadline:
            time.sleep(0.5)
        report(counts, dsn, started)
    finally:
        stop_writing.set()
        stop_reading.set()
        for process in relays:
            process.terminate()
        for process in relays:
            process.wait(30)
        reader.join(10)
    summarize(counts, dsn)


def summarize(counts: Counts, dsn: str) -> None:
    latencies = sorted(counts.latencies) or [0.0]
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    lost = counts.written - len(counts.received)
    print(
        f"\nwritten {counts.written}, delivered {len(counts.received)} distinct "
        f"({counts.deliveries - len(counts.received)} duplicates), lost {lost}"
    )
    print(f"commit-to-consumer latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    status = subprocess.run([COMMAND, "status", "--dsn", dsn], capture_output=True, text=True)
    print("\n" + status.stdout)


if __name__ == "__main__":
    main()
