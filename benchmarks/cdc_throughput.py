"""How many outbox rows per second CDC mode streams into the in-memory connector, and how
much WAL an idle slot keeps while other tables take ~100 MB of writes.

    .venv/bin/python benchmarks/cdc_throughput.py [--rows 100000] [--per-transaction 100]
        [--batch 500] [--payload 200]

It starts a throwaway PostgreSQL cluster (wal_level=logical, fsync off), writes the rows
*before* the relay starts streaming them from the slot (the slot is created first, so the
rows come through the WAL, not the snapshot), then measures from the first event
published to the last. Decoding, mapping and batching are what is measured; the broker
is the in-memory one, so this is an upper bound for a real broker.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.migrations import migrate
from tests.integration.test_cdc_slots import write_elsewhere
from tests.support.cdc_relays import RunningCdcRelay, cdc_config, slot_position
from tests.support.services import ThrowawayPostgres


def fill(dsn: str, rows: int, per_transaction: int, size: int) -> None:
    note = "x" * size
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(0, rows, per_transaction):
            count = min(per_transaction, rows - first)
            conn.execute(
                "INSERT INTO outbox.messages (topic, key, payload) "
                "SELECT 'orders', 'k' || (g %% 100), jsonb_build_object('n', g, 'note', %s::text) "
                "FROM generate_series(%s::int, %s::int) g", (note, first, first + count - 1))


async def throughput(dsn: str, args: argparse.Namespace) -> float:
    config = cdc_config(dsn, batch_size=args.batch)
    async with RunningCdcRelay(config) as running:
        await running.streaming()
        running.stopping.set()  # stop now: the slot exists, the rows go through the WAL
    await asyncio.to_thread(fill, dsn, args.rows, args.per_transaction, args.payload)
    async with RunningCdcRelay(config) as running:
        published = running.connector.published
        while not published:
            await asyncio.sleep(0.001)
        started = time.monotonic()
        while len(published) < args.rows:
            await asyncio.sleep(0.01)
        return args.rows / (time.monotonic() - started)


async def idle_retention(dsn: str) -> tuple[int, int]:
    async with RunningCdcRelay(cdc_config(dsn)) as running:
        await running.streaming()
        before = slot_position(dsn)["current"]
        await asyncio.to_thread(write_elsewhere, dsn, 100)
        written = slot_position(dsn)["current"] - before
        await asyncio.sleep(12)  # past one idle save interval
        return written, slot_position(dsn)["retained"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--per-transaction", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--payload", type=int, default=200)
    args = parser.parse_args()
    with ThrowawayPostgres() as server:
        for name in ("speed", "idle"):
            with psycopg.connect(server.create_database(name), autocommit=True) as conn:
                migrate(conn, "outbox")
        rate = asyncio.run(throughput(server.database_dsn("speed"), args))
        print(f"streamed {args.rows} rows ({args.per_transaction} per transaction) at "
              f"{rate:,.0f} rows/s into the in-memory connector")
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('outbox_relay_outbox')")
        written, retained = asyncio.run(idle_retention(server.database_dsn("idle")))
        print(f"idle slot: {written / 1e6:.0f} MB written to another table, "
              f"{retained / 1e6:.2f} MB retained by the slot afterwards")


if __name__ == "__main__":
    main()
