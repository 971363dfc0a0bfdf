"""The ceiling of CPU per message at light traffic in CDC mode: the leanest relay that
streams each commit from a pgoutput slot to Kafka within milliseconds, with the same
libraries (benchmarks/minimal_relay.py is its polling counterpart).

    python -m benchmarks.minimal_cdc_relay --dsn DSN --kafka-bootstrap H:P
        [--kafka-settings plain|relay] [--reports flush|thread] [--progress FILE]

asyncio and one psycopg replication connection: a publication of ``outbox.messages``'s
inserts and a temporary pgoutput slot of its own, streamed with ``START_REPLICATION`` in
text format, read through libpq (``get_copy_data``) when the event loop sees the socket
readable. At each Commit it produces the transaction's rows (``id``, ``topic``, ``key``,
``payload``, taken from the Relation's column order), waits for their delivery reports
(``--reports flush``: ``flush()`` on the event loop's thread; ``thread``: a thread serves
``poll()`` and resolves a future, as the connector does, so the loop never blocks on the
broker), and confirms the commit's LSN to the server at most once a second, or at
once when a keepalive asks. No leases, retries, decoding of other columns, retention,
metrics or logging: the floor under what a CDC relay with the same latency can cost per
message on this machine. Kafka only; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from typing import Any

import psycopg
from psycopg import pq

from benchmarks.minimal_relay import Progress, Sender, producer_config, run_main

SLOT = PUBLICATION = "minimal_cdc"
WANTED = ("id", "topic", "key", "payload")
CONFIRM_EVERY = 1.0  # seconds between two unrequested status updates
READ_WAIT = 1.0  # seconds: a stop request is seen at least this often
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch
_XLOG_HEADER = struct.Struct(">cQQQ")  # 'w', start, end, send time
_STATUS = struct.Struct(">cQQQQB")  # 'r', written, flushed, applied, time, reply
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def relation_columns(data: bytes) -> tuple[int, list[int]]:
    """A Relation message: the relation's oid and, for WANTED, their column indexes."""
    oid = _U32.unpack_from(data, 1)[0]
    pos = data.index(0, 5) + 1  # past the namespace
    pos = data.index(0, pos) + 1 + 1  # past the name and the replica identity
    count, pos = _U16.unpack_from(data, pos)[0], pos + 2
    names = []
    for _ in range(count):  # each: flags, name, type oid, typmod
        end = data.index(0, pos + 1)
        names.append(data[pos + 1 : end].decode())
        pos = end + 1 + 8
    return oid, [names.index(name) for name in WANTED]


def insert_values(data: bytes) -> list[str | None]:
    """An Insert message's new tuple, text values (None: NULL or unchanged TOAST)."""
    values: list[str | None] = []
    pos = 8  # 'I', the relation's oid, 'N', the column count
    for _ in range(_U16.unpack_from(data, 6)[0]):
        kind = data[pos]
        if kind == 0x74:  # 't'
            size = _U32.unpack_from(data, pos + 1)[0]
            values.append(data[pos + 5 : pos + 5 + size].decode())
            pos += 5 + size
        else:  # 'n' or 'u'
            values.append(None)
            pos += 1
    return values


class Stream:
    """The replication connection, its transaction being read, and what it confirmed."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], sender: Sender, progress: Progress):
        self._pgconn = conn.pgconn
        self._sender = sender
        self._progress = progress
        self._columns: dict[int, list[int]] = {}
        self._rows: list[tuple[Any, ...]] = []
        self._received = self._confirmed = 0
        self._confirmed_at = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while (frame := self._next_frame()) is not None:
                await self._handle(bytes(frame))
            readable = loop.create_future()
            loop.add_reader(self._pgconn.socket, _resolve, readable)
            timer = loop.call_later(READ_WAIT, _resolve, readable)
            try:
                await readable
            finally:
                timer.cancel()
                loop.remove_reader(self._pgconn.socket)
            self._pgconn.consume_input()

    def _next_frame(self) -> memoryview | None:
        size, data = self._pgconn.get_copy_data(1)
        if size < 0:
            raise RuntimeError("the replication stream ended")
        return data if size else None

    async def _handle(self, frame: bytes) -> None:
        if frame[0] == 0x6B:  # 'k': a keepalive; its last byte asks for a reply
            self._received = max(self._received, struct.unpack_from(">Q", frame, 1)[0])
            if frame[-1]:
                self._confirm(reply=False)
            return
        _, _start, end, _sent = _XLOG_HEADER.unpack_from(frame)
        self._received = max(self._received, end)
        data = frame[_XLOG_HEADER.size :]
        tag = data[0]
        if tag == 0x52:  # 'R'
            oid, columns = relation_columns(data)
            self._columns[oid] = columns
        elif tag == 0x49:  # 'I'
            values = insert_values(data)
            columns = self._columns[_U32.unpack_from(data, 1)[0]]
            self._rows.append((None, *(values[i] for i in columns)))  # Sender's row shape
        elif tag == 0x43:  # 'C': the commit's end LSN is what may be confirmed
            await self._commit(struct.unpack_from(">Q", data, 10)[0])

    async def _commit(self, end_lsn: int) -> None:
        rows, self._rows = self._rows, []
        if rows:
            await self._sender.send_all(rows)
            self._progress.add(len(rows))
        self._confirmed = end_lsn
        if time.monotonic() - self._confirmed_at >= CONFIRM_EVERY:
            self._confirm(reply=False)

    def _confirm(self, *, reply: bool) -> None:
        now_us = time.time_ns() // 1000 - PG_EPOCH_US
        flushed = self._confirmed or 0
        self._pgconn.put_copy_data(
            _STATUS.pack(b"r", max(self._received, flushed), flushed, flushed, now_us, reply)
        )
        self._pgconn.flush()
        self._confirmed_at = time.monotonic()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def start(dsn: str) -> psycopg.AsyncConnection[Any]:
    """The publication, then a replication connection streaming a new temporary slot."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            await conn.execute(
                f"CREATE PUBLICATION {PUBLICATION} FOR TABLE outbox.messages"
                " WITH (publish = 'insert')"
            )
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, replication="database")
    await conn.execute(f"CREATE_REPLICATION_SLOT {SLOT} TEMPORARY LOGICAL pgoutput")
    pgconn = conn.pgconn
    pgconn.send_query(
        f"START_REPLICATION SLOT {SLOT} LOGICAL 0/0"
        f" (proto_version '1', publication_names '{PUBLICATION}')".encode()
    )
    while pgconn.flush():
        await asyncio.sleep(0.01)
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        await asyncio.sleep(0.01)
    result = pgconn.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_BOTH:
        raise RuntimeError(f"START_REPLICATION failed: {pgconn.error_message.decode()}")
    return conn


async def relay(dsn: str, sender_args: tuple[str, str, str], progress: Progress) -> None:
    bootstrap, settings, reports = sender_args
    conn = await start(dsn)
    sender = Sender(producer_config(bootstrap, settings), reports)
    try:
        await Stream(conn, sender, progress).run()
    finally:
        sender.close()
        await conn.close()


def main() -> None:
    run_main(__doc__, relay, "minimal CDC relay")


if __name__ == "__main__":
    main()
