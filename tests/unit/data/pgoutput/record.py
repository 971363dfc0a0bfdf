"""Record real pgoutput replication frames for tests/unit/test_pgoutput.py.

Run by hand from the repository root when the recordings need refreshing:

    .venv/bin/python tests/unit/data/pgoutput/record.py [--bindir /usr/lib/postgresql/15/bin]

As root it runs the PostgreSQL binaries as the ``postgres`` OS user (``runuser``);
as any other user it runs them as that user. It:

1. initdb's a throwaway cluster in a temporary directory and starts it with
   ``wal_level=logical`` on a free port bound to 127.0.0.1 (the socket lives in that
   directory too), so no shared cluster is touched;
2. creates an outbox-like table ``outbox`` (publication ``outbox_pub``, inserts only)
   and a ``probe`` table (publication ``probe_pub``, every operation) with an enum
   column, and one logical slot ``rec`` (pgoutput);
3. runs the transactions listed in ``WORKLOAD`` comments below;
4. streams the slot three times from its start (no feedback is sent, so the slot does
   not advance) with ``proto_version '1'`` and saves each CopyData frame:

   - ``frames_binary.bin``: outbox_pub, ``binary 'true'``, ``messages 'true'``
   - ``frames_text.bin``:   outbox_pub, ``binary 'false'``, ``messages 'true'``
   - ``frames_probe.bin``:  probe_pub, ``binary 'true'``, ``messages 'false'``

   File format: a sequence of records, each a 4-byte big-endian length followed by one
   raw CopyData frame ('w' XLogData or 'k' keepalive) exactly as psycopg returned it.

5. stops the cluster with ``pg_ctl stop`` and deletes the directory.

The values inserted are mirrored in the test as expectations; change both together.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import pq

HERE = Path(__file__).resolve().parent
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c bytea_output=hex"


def big_blob(seed: str, size: int) -> str:
    """Incompressible ASCII so the value is stored out of line (TOAST), not compressed."""
    return base64.b64encode(random.Random(seed).randbytes(size * 3 // 4)).decode()


SETUP = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    seq bigint NOT NULL,
    topic text NOT NULL,
    key text,
    payload jsonb,
    payload_bytes bytea,
    headers jsonb,
    created_at timestamptz NOT NULL
);
CREATE TABLE probe (id int4 PRIMARY KEY, mood mood, big text, flag bool, small int2);
CREATE TABLE unpublished (id int4);
CREATE PUBLICATION outbox_pub FOR TABLE outbox WITH (publish = 'insert');
CREATE PUBLICATION probe_pub FOR TABLE probe;
SELECT pg_create_logical_replication_slot('rec', 'pgoutput');
SELECT pg_replication_origin_create('upstream');
"""

OUTBOX_INSERT = (
    "INSERT INTO outbox (id, seq, topic, key, payload, payload_bytes, headers, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)


def run_workload(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    # WORKLOAD 1: three outbox rows in one transaction (NULLs, bytea, non-ASCII text).
    with conn.transaction():
        conn.execute(
            OUTBOX_INSERT,
            (
                "11111111-1111-4111-8111-111111111111",
                1,
                "orders",
                "order-1",
                '{"total": 12.5, "items": [1, 2]}',
                None,
                '{"trace": "abc"}',
                "2024-05-06 07:08:09.123456+00",
            ),
        )
        conn.execute(
            OUTBOX_INSERT,
            (
                "22222222-2222-4222-8222-222222222222",
                2,
                "blobs",
                None,
                None,
                b"\x00\xff\x10binary\x00",
                None,
                "2024-05-06 07:08:10+00",
            ),
        )
        conn.execute(
            OUTBOX_INSERT,
            (
                "33333333-3333-4333-8333-333333333333",
                3,
                "événements",
                "clé-ü",
                '{"msg": "héllo ☃"}',
                b"",
                "{}",
                "1999-12-31 23:59:59.999999+00",
            ),
        )
    # WORKLOAD 2: one row whose jsonb payload is > 8 KB and stored out of line.
    with conn.transaction():
        conn.execute(
            OUTBOX_INSERT,
            (
                "44444444-4444-4444-8444-444444444444",
                4,
                "big",
                "big-1",
                f'{{"blob": "{big_blob("outbox", 12_000)}"}}',
                None,
                None,
                "2024-05-06 07:08:11+00",
            ),
        )
    # WORKLOAD 3: insert then delete in one transaction (outbox_pub publishes the insert).
    with conn.transaction():
        conn.execute(
            OUTBOX_INSERT,
            (
                "55555555-5555-4555-8555-555555555555",
                5,
                "orders",
                "order-5",
                '{"deleted": true}',
                None,
                None,
                "2024-05-06 07:08:12+00",
            ),
        )
        conn.execute("DELETE FROM outbox WHERE seq = 5")
    # WORKLOAD 4: a transactional logical message alone in its transaction.
    with conn.transaction():
        conn.execute(
            "SELECT pg_logical_emit_message(true, 'outbox', %s::text)",
            ('{"event": "transactional"}',),
        )
    # WORKLOAD 5: a non-transactional message with raw bytes.
    conn.execute(
        "SELECT pg_logical_emit_message(false, 'outbox', %s::bytea)", (b"\x00raw\xffbytes",)
    )
    run_probe_workload(conn)
    # A last commit flushes WAL, so the non-transactional message (not flushed on its
    # own) reaches the walsender. 'unpublished' is in no publication: nothing is sent.
    with conn.transaction():
        conn.execute("INSERT INTO unpublished VALUES (1)")


def run_probe_workload(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    # WORKLOAD 6: probe insert with a TOASTed text; enum column triggers a Type message.
    with conn.transaction():
        conn.execute(
            "INSERT INTO probe VALUES (1, 'happy', %s, true, -7)", (big_blob("probe", 12_000),)
        )
    # WORKLOAD 7: update that leaves the TOASTed column alone: it arrives as 'u'.
    with conn.transaction():
        conn.execute("UPDATE probe SET small = 8, flag = false WHERE id = 1")
    # WORKLOAD 8: update of the key: an old-key ('K') tuple comes first.
    with conn.transaction():
        conn.execute("UPDATE probe SET id = 2 WHERE id = 1")
    # WORKLOAD 9: delete, then a transaction replayed from origin 'upstream'.
    with conn.transaction():
        conn.execute("DELETE FROM probe WHERE id = 2")
    conn.execute("SELECT pg_replication_origin_session_setup('upstream')")
    with conn.transaction():
        conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
        conn.execute("INSERT INTO probe (id, mood) VALUES (3, 'sad')")
    conn.execute("SELECT pg_replication_origin_session_reset()")
    # WORKLOAD 10: truncate with RESTART IDENTITY.
    with conn.transaction():
        conn.execute("TRUNCATE probe RESTART IDENTITY")


def stream_frames(
    conninfo: str, publication: str, *, binary: bool, messages: bool, until_lsn: int
) -> list[bytes]:
    """Stream slot 'rec' from its start; stop at the first keepalive at or past until_lsn."""
    options = (
        f"proto_version '1', publication_names '{publication}', "
        f"messages '{str(messages).lower()}', binary '{str(binary).lower()}'"
    )
    frames: list[bytes] = []
    # Not a context manager: leaving one would send COMMIT in the middle of COPY BOTH.
    conn = psycopg.connect(
        conninfo,
        replication="database",
        autocommit=True,
        options=SESSION_OPTIONS,
        client_encoding="UTF8",
    )
    try:
        pgconn = conn.pgconn
        pgconn.send_query(f"START_REPLICATION SLOT rec LOGICAL 0/0 ({options})".encode())
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise RuntimeError(f"START_REPLICATION failed: {pgconn.error_message!r}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            size, data = pgconn.get_copy_data(1)
            if size == 0:
                select.select([pgconn.socket], [], [], 0.5)
                pgconn.consume_input()
                continue
            if size < 0:
                raise RuntimeError(f"stream ended: {pgconn.error_message!r}")
            frame = bytes(data)
            frames.append(frame)
            if frame[:1] == b"k" and struct.unpack_from("!Q", frame, 1)[0] >= until_lsn:
                return frames
    finally:
        conn.close()
    raise RuntimeError("timed out before the stream caught up")


def write_frames(path: Path, frames: Sequence[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack("!I", len(f)) + f for f in frames))


def as_cluster_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindir", default="/usr/lib/postgresql/15/bin")
    bindir = Path(parser.parse_args().bindir)
    datadir = Path(tempfile.mkdtemp(prefix="pgoutput-record-"))
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    port = free_port()
    initdb = [
        str(bindir / "initdb"),
        "-D",
        str(datadir),
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
    ]
    subprocess.run(as_cluster_user(initdb), check=True, stdout=subprocess.DEVNULL)
    server = subprocess.Popen(
        as_cluster_user(
            [
                str(bindir / "postgres"),
                "-D",
                str(datadir),
                "-c",
                "wal_level=logical",
                "-c",
                f"port={port}",
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={datadir}",
                "-c",
                "fsync=off",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        record(f"host=127.0.0.1 port={port} user=postgres dbname=postgres")
    finally:
        subprocess.run(
            as_cluster_user(
                [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"]
            ),
            check=False,
        )
        server.wait(timeout=30)
        shutil.rmtree(datadir, ignore_errors=True)


def connect_with_retry(conninfo: str) -> psycopg.Connection[tuple[object, ...]]:
    deadline = time.monotonic() + 30
    while True:
        try:
            return psycopg.connect(conninfo, autocommit=True, options=SESSION_OPTIONS)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def record(conninfo: str) -> None:
    with connect_with_retry(conninfo) as conn:
        for statement in filter(str.strip, SETUP.split(";")):
            conn.execute(statement)
        run_workload(conn)
        row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        hi, lo = str(row[0]).split("/")
        until_lsn = int(hi, 16) << 32 | int(lo, 16)
        toasted = conn.execute(
            "SELECT pg_column_size(payload) FROM outbox WHERE seq = 4"
        ).fetchone()
        print(f"stored size of the big payload: {toasted}", file=sys.stderr)
    for name, publication, binary, messages in [
        ("frames_binary.bin", "outbox_pub", True, True),
        ("frames_text.bin", "outbox_pub", False, True),
        ("frames_probe.bin", "probe_pub", True, False),
    ]:
        frames = stream_frames(
            conninfo, publication, binary=binary, messages=messages, until_lsn=until_lsn
        )
        write_frames(HERE / name, frames)
        print(f"{name}: {len(frames)} frames", file=sys.stderr)


if __name__ == "__main__":
    main()
