"""The ceiling of CPU per message at light traffic: the leanest relay that still answers
each commit within milliseconds (one claim cycle per wake-up), with the same libraries.

    python -m benchmarks.minimal_relay --dsn DSN --kafka-bootstrap H:P
        [--kafka-settings plain|relay] [--reports flush|thread] [--progress FILE]

asyncio and two psycopg ``AsyncConnection``s: one ``LISTEN``s on the outbox's channel (the
wake-up trigger notifies while a live polling relay listens, so this one registers itself
in ``outbox.relays``); on each notification the other claims the pending rows in one
round trip (``BEGIN; SELECT ... FOR UPDATE SKIP LOCKED`` as one simple query), produces
them, waits for their delivery reports, then deletes them and commits in one round trip
(``DELETE ...; COMMIT``). No leases, buckets, key holds, retries, metrics or logging: the
floor under what a relay with the same latency can cost per message on this machine.

``--kafka-settings plain``: librdkafka's defaults (only ``bootstrap.servers``);
``relay``: outbox-relay's connector's (``connectors/kafka_settings.py``: acks=all,
idempotence, lz4, linger.ms=1, message.timeout.ms from the 5 s publish timeout, with an
error callback and a logger). ``--reports flush``: ``flush()`` on the event loop's thread,
which has nothing else to do meanwhile; ``thread``: a thread serves ``poll()`` and each
report resolves a future through ``call_soon_threadsafe``, as the connector does.
The count of delivered messages goes to ``--progress`` through a shared memory map (no
system call per message). Kafka only; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import mmap
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg

CHANNEL = '"outbox.messages"'
CLAIM = (
    "BEGIN; SELECT seq, id::text, topic, key, payload::text FROM outbox.messages"
    " WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT 100"
    " FOR UPDATE SKIP LOCKED"
)
REGISTER = (
    "INSERT INTO outbox.relays (relay_id, name, mode, expires_at)"
    " VALUES (gen_random_uuid(), 'minimal-relay', 'poll', now() + interval '1 day')"
)
SAFETY_POLL = 1.0  # seconds: a claim without a wake-up, in case a notification was missed
PROGRESS_WIDTH = 20


def producer_config(bootstrap: str, settings: str) -> dict[str, Any]:
    if settings == "plain":
        return {"bootstrap.servers": bootstrap}
    import logging

    from connectors.kafka import _log_client_error  # the connector's own error callback
    from connectors.kafka_settings import KafkaSettings
    from relay.config import DEFAULT_PUBLISH_TIMEOUT

    config = KafkaSettings(bootstrap_servers=bootstrap).client_config(
        publish_timeout=DEFAULT_PUBLISH_TIMEOUT
    )
    return {**config, "error_cb": _log_client_error, "logger": logging.getLogger("rdkafka")}


class Sender:
    """Produce a claim's rows and wait for every delivery report."""

    def __init__(self, config: dict[str, Any], reports: str) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(config)
        self._by_thread = reports == "thread"
        self._errors: list[Any] = []
        self._left = 0
        self._done: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._stopping = threading.Event()
        if self._by_thread:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    def _report(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)
        self._left -= 1
        if self._left == 0 and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set_result, None)

    async def send_all(self, rows: list[tuple[Any, ...]]) -> None:
        self._errors.clear()
        self._left = len(rows)
        if self._by_thread:
            self._done = self._loop.create_future()
        for _seq, message_id, topic, key, payload in rows:
            self._producer.produce(
                topic,
                payload.encode(),
                None if key is None else key.encode(),
                headers=[("message_id", message_id.encode())],
                on_delivery=self._report,
            )
        if self._done is not None:
            await self._done
            self._done = None
        else:
            self._producer.flush(30)  # the loop has nothing else to do meanwhile
        if self._errors:
            raise RuntimeError(f"not delivered: {self._errors[0]}")

    def close(self) -> None:
        self._stopping.set()
        self._producer.flush(10)


class Progress:
    """The count of delivered messages, as padded text in a memory-mapped file."""

    def __init__(self, path: str | None) -> None:
        self.count = 0
        self._map: mmap.mmap | None = None
        if path:
            with open(path, "wb+") as f:
                f.write(b"0".ljust(PROGRESS_WIDTH))
                f.flush()
                self._map = mmap.mmap(f.fileno(), PROGRESS_WIDTH)

    def add(self, count: int) -> None:
        self.count += count
        if self._map is not None:
            self._map[:] = str(self.count).encode().ljust(PROGRESS_WIDTH)


async def cycle(conn: psycopg.AsyncConnection[Any], sender: Sender, progress: Progress) -> int:
    """One claim: BEGIN + claim, produce and wait, DELETE + COMMIT; the rows relayed."""
    cur = conn.cursor()
    await cur.execute(CLAIM)
    cur.nextset()
    rows = await cur.fetchall()
    if rows:
        await sender.send_all(rows)
        # one simple query, so DELETE and COMMIT share a round trip; the seqs are ints
        # from the claim, so the literal is safe
        seqs = ",".join(str(r[0]) for r in rows)
        await cur.execute(
            f"DELETE FROM outbox.messages WHERE seq = ANY('{{{seqs}}}'::bigint[]); COMMIT"  # noqa: S608
        )
        progress.add(len(rows))
    else:
        await cur.execute("COMMIT")
    return len(rows)


async def relay(dsn: str, sender_args: tuple[str, str, str], progress: Progress) -> None:
    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    worker = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await listener.execute(f"LISTEN {CHANNEL}")
    await worker.execute(REGISTER)
    sender = Sender(producer_config(sender_args[0], sender_args[1]), sender_args[2])
    try:
        while await cycle(worker, sender, progress) == 100:
            pass  # what was there before the start
        while True:
            async for _ in listener.notifies(timeout=SAFETY_POLL, stop_after=1):
                pass
            while await cycle(worker, sender, progress) == 100:
                pass
    finally:
        sender.close()
        await listener.close()
        await worker.close()


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options both minimal relays take."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--connector", choices=("kafka",), default="kafka")
    parser.add_argument("--kafka-bootstrap", default="localhost:9092")
    parser.add_argument("--kafka-settings", choices=("plain", "relay"), default="plain")
    parser.add_argument("--reports", choices=("flush", "thread"), default="flush")
    parser.add_argument("--progress", help="keep the count of confirmed messages in this file")
    return parser


def run_until_stopped(relaying: Coroutine[Any, Any, None]) -> None:
    """Run ``relaying`` until it ends or SIGTERM/SIGINT cancels it."""

    async def run() -> None:
        task = asyncio.create_task(relaying)
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


Relaying = Callable[[str, tuple[str, str, str], Progress], Coroutine[Any, Any, None]]


def run_main(doc: str, relaying: Relaying, name: str) -> None:
    """A minimal relay's command: its options, ``relaying`` until SIGTERM/SIGINT, and
    how many messages it sent."""
    args = arguments(doc).parse_args()
    progress = Progress(args.progress)
    sender_args = (args.kafka_bootstrap, args.kafka_settings, args.reports)
    run_until_stopped(relaying(args.dsn, sender_args, progress))
    print(f"{name} stopped; {progress.count} messages sent", flush=True)


def main() -> None:
    run_main(__doc__, relay, "minimal relay")


if __name__ == "__main__":
    main()
