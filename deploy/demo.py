"""`make demo`: a throwaway PostgreSQL and Kafka-protocol broker, two relays, an
application writing orders, and a consumer — with live counts.

It writes for DEMO_SECONDS (default 12), then waits for the last deliveries and prints a
summary. Ctrl-C stops the writing early and ends with the same summary (a second Ctrl-C
skips the wait for deliveries). Everything runs on loopback and is stopped by PID; the
relays run in sessions of their own so that Ctrl-C reaches only the demo, which stops
them in order.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import FrameType

import orjson
import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import relay
from tests.support.services import TansuBroker, ThrowawayPostgres

COMMAND = str(Path(sys.executable).with_name("outbox-relay"))
TOPIC, PARTITIONS, KEYS, RELAYS = "orders", 3, 50, 2
SECONDS = float(os.environ.get("DEMO_SECONDS", "12"))
DRAIN_SECONDS = 30.0  # the longest wait for the last deliveries after the writing stops


class StopRequest:
    """Ctrl-C: the first ends the writing (the summary follows), the second also ends
    the wait for the last deliveries."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurry = threading.Event()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            self.hurry.set()
            print("\nsecond Ctrl-C: not waiting for the last deliveries", flush=True)
        else:
            self.requested.set()
            print("\nCtrl-C: stopping the writers; the summary follows", flush=True)


class Counts:
    def __init__(self) -> None:
        self.written = 0  # committed: the relay can deliver no other
        self.received: set[str] = set()
        self.deliveries = 0
        self.latencies: list[float] = []

    def snapshot(self) -> tuple[int, int]:
        """(delivered, written), read in this order so delivered never exceeds written:
        a delivery counted now was committed, and counted as written, before."""
        delivered = len(self.received)
        return delivered, self.written


def write_orders(dsn: str, counts: Counts, stop: threading.Event) -> None:
    """The application: each transaction writes business data and its events together."""
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, total int)")
        conn.commit()
        while not stop.is_set():
            with conn.transaction():
                for n in range(10):
                    order_id = uuid.uuid4()
                    customer = f"customer-{(counts.written + n) % KEYS}"
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
            counts.written += 10
            stop.wait(0.02)


def kafka_client_log(log_dir: Path) -> logging.Logger:
    """librdkafka's own lines (``%6|...|BGQUEUE|...``) go to a file, not the screen."""
    logger = logging.getLogger("demo.kafka-client")
    logger.addHandler(logging.FileHandler(log_dir / "kafka-client.log"))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def consume(bootstrap: str, counts: Counts, stop: threading.Event, log: logging.Logger) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "demo",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "logger": log,
        }
    )
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    try:
        while not stop.is_set():
            for message in consumer.consume(500, timeout=0.02):
                if message.error():
                    continue
                headers = dict(message.headers() or [])
                sent = orjson.loads(message.value())["written_at"]
                counts.latencies.append(time.time() - sent)
                counts.deliveries += 1
                counts.received.add(headers["message_id"].decode())
    finally:
        consumer.close()


def create_topic(bootstrap: str, log: logging.Logger) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": log})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(15)


def pending(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def start_relay(dsn: str, bootstrap: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("w") as log:
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
                "--metrics-port",
                "0",  # two relays on one host: neither needs /metrics here
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C is the demo's: it stops the relays in order
        )


def wait_until_leasing(
    relays: list[subprocess.Popen[bytes]], logs: list[Path], stop: StopRequest
) -> None:
    """Until every relay holds its buckets: the writers start on a running relay, so the
    latencies shown are the relay's, not its start-up."""
    deadline = time.monotonic() + 60
    waiting = list(zip(relays, logs, strict=True))
    while waiting and not stop.requested.is_set():
        waiting = [(p, log) for p, log in waiting if "now leases" not in log.read_text()]
        for process, log in waiting:
            if process.poll() is not None:
                raise SystemExit(f"a relay stopped at start-up; its log:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the relays did not start within a minute; logs in {logs[0].parent}")
        stop.requested.wait(0.1)


def report(counts: Counts, dsn: str, started: float) -> None:
    delivered, written = counts.snapshot()
    elapsed = time.monotonic() - started
    print(
        f"  {elapsed:5.1f}s  written {written:6d}  pending {pending(dsn):5d}  "
        f"delivered {delivered:6d}  ({written / max(elapsed, 1e-9):,.0f}/s)",
        flush=True,
    )


def main() -> int:
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop.handle)
    log_dir = Path(tempfile.mkdtemp(prefix="outbox-demo-"))
    print(
        f"outbox-relay demo: writes orders for {SECONDS:.0f}s, then prints a summary "
        f"(DEMO_SECONDS=60 make demo for longer). Ctrl-C stops early, with the same summary."
    )
    print("starting a throwaway PostgreSQL (wal_level=logical) and a Kafka-protocol broker...")
    with ThrowawayPostgres() as pg, TansuBroker() as kafka:
        migrated = subprocess.run(
            [COMMAND, "migrate", "--dsn", pg.dsn], capture_output=True, start_new_session=True
        )
        if migrated.returncode != 0:
            raise SystemExit(migrated.stderr.decode())
        client_log = kafka_client_log(log_dir)
        create_topic(kafka.bootstrap, client_log)
        logs = [log_dir / f"relay-{n}.log" for n in range(RELAYS)]
        relays = [start_relay(pg.dsn, kafka.bootstrap, log) for log in logs]
        try:
            wait_until_leasing(relays, logs, stop)
            if not stop.requested.is_set():
                print(f"{RELAYS} relays running (logs in {log_dir}); the application writes now\n")
            run_demo(pg.dsn, kafka.bootstrap, stop, client_log)
        finally:
            stop_relays(relays)
    print(f"\nstopped everything; the logs are in {log_dir}")
    return 0


def run_demo(dsn: str, bootstrap: str, stop: StopRequest, client_log: logging.Logger) -> None:
    """Write until SECONDS passed or Ctrl-C (no writing at all after a Ctrl-C during the
    start-up), wait for the deliveries, and summarize."""
    counts, stop_writing, stop_reading = Counts(), threading.Event(), threading.Event()
    if stop.requested.is_set():
        stop_writing.set()
    reader = threading.Thread(
        target=consume, args=(bootstrap, counts, stop_reading, client_log), daemon=True
    )
    writer = threading.Thread(target=write_orders, args=(dsn, counts, stop_writing), daemon=True)
    reader.start()
    started = time.monotonic()
    writer.start()
    try:
        while time.monotonic() - started < SECONDS and not stop.requested.wait(1.0):
            report(counts, dsn, started)
        stop_writing.set()
        writer.join()
        wait_for_deliveries(counts, stop)
        report(counts, dsn, started)
        status = outbox_status(dsn)  # while the relays still run: they show as alive
    finally:
        stop_writing.set()
        stop_reading.set()
        reader.join(10)
    summarize(counts, status)


def wait_for_deliveries(counts: Counts, stop: StopRequest) -> None:
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and not stop.hurry.is_set():
        delivered, written = counts.snapshot()
        if delivered >= written:
            return
        stop.hurry.wait(0.2)


def outbox_status(dsn: str) -> str:
    shown = subprocess.run(
        [COMMAND, "status", "--dsn", dsn], capture_output=True, text=True, start_new_session=True
    )
    return shown.stdout or shown.stderr


def stop_relays(relays: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM: each finishes its batch in flight and releases its leases."""
    for process in relays:
        if process.poll() is None:
            process.terminate()
    for process in relays:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def summarize(counts: Counts, status: str) -> None:
    delivered, written = counts.snapshot()
    latencies = sorted(counts.latencies) or [0.0]
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(
        f"\nwritten {written}, delivered {delivered} distinct "
        f"({counts.deliveries - delivered} duplicates)"
        + (f", {written - delivered} not yet delivered" if delivered < written else ", none lost")
    )
    print(f"commit-to-consumer latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(f"\n`outbox-relay status` before the relays stopped:\n{status}")


if __name__ == "__main__":
    sys.exit(main())
