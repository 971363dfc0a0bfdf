"""The NOTIFY listener against real PostgreSQL: a burst of notifications is one or two
wake-ups, the last notification of a burst still wakes, and a lone one wakes at once."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from relay.db import DbSession
from relay.poll.listener import SharedListener, WakeListener, channel_name

pytestmark = pytest.mark.integration

BURST = 50


async def wakes_for_a_burst(dsn: str, coalesce: float) -> tuple[list[float], float, float]:
    """Wake-up times for BURST notifying transactions, when the last was about to be
    sent, and how long a lone notification after a pause took to wake the relay."""
    wakes: list[float] = []
    session = DbSession(dsn, "listen", connect_timeout=5)
    listener = WakeListener(session, "outbox", lambda: wakes.append(time.monotonic()), coalesce)
    listener.start()
    try:
        while not wakes:  # the wake-up that follows LISTEN
            await asyncio.sleep(0.01)
        wakes.clear()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as writer:
            for _ in range(BURST):  # autocommit: one transaction, one notification each
                last_sent = time.monotonic()
                await writer.execute("SELECT pg_notify(%s, '')", (channel_name("outbox"),))
            await asyncio.sleep(coalesce + 0.5)
            burst = list(wakes)
            lone_sent = time.monotonic()
            await writer.execute("SELECT pg_notify(%s, '')", (channel_name("outbox"),))
            while len(wakes) == len(burst):
                await asyncio.sleep(0.001)
        return burst, last_sent, wakes[-1] - lone_sent
    finally:
        await listener.stop()


def test_a_burst_of_notifications_wakes_the_relay_once_per_coalescing_pause(db_dsn):
    burst, last_sent, lone_latency = asyncio.run(wakes_for_a_burst(db_dsn, 0.2))
    assert 1 <= len(burst) <= 3
    assert burst[-1] >= last_sent  # what arrived during the pause was read, not dropped
    assert lone_latency < 0.1  # no pause before the first wake-up


def test_without_coalescing_the_relay_wakes_as_notifications_arrive(db_dsn):
    burst, last_sent, lone_latency = asyncio.run(wakes_for_a_burst(db_dsn, 0.0))
    # how many share one wake-up depends on how they were packed into packets
    assert burst and burst[-1] >= last_sent and lone_latency < 0.1


def test_a_trickle_of_notifications_wakes_the_relay_without_pausing(db_dsn, monkeypatch):
    """Notifications further apart than PAUSE_WITHIN pauses gather nothing in a pause."""
    pauses = []
    real_pause = SharedListener._pause

    async def counted(self):
        pauses.append(time.monotonic())
        await real_pause(self)

    monkeypatch.setattr(SharedListener, "_pause", counted)
    coalesce = 0.02

    async def scenario() -> tuple[int, int]:
        wakes: list[float] = []
        session = DbSession(db_dsn, "listen", connect_timeout=5)
        listener = WakeListener(session, "outbox", lambda: wakes.append(1), coalesce)
        listener.start()
        try:
            while not wakes:
                await asyncio.sleep(0.01)
            async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as writer:
                for _ in range(5):
                    await asyncio.sleep(SharedListener.PAUSE_WITHIN * coalesce * 2)
                    await writer.execute("SELECT pg_notify(%s, '')", (channel_name("outbox"),))
                await asyncio.sleep(0.1)
                trickle = len(pauses)
                for _ in range(BURST):
                    await writer.execute("SELECT pg_notify(%s, '')", (channel_name("outbox"),))
                await asyncio.sleep(0.1)
            return trickle, len(pauses) - trickle
        finally:
            await listener.stop()

    trickle, burst = asyncio.run(scenario())
    assert trickle == 0 and burst >= 1


def test_a_listening_connection_that_is_killed_is_replaced_and_wakes_again(db_dsn):
    """The listener notices the broken connection, reconnects, wakes once (notifications
    sent meanwhile are lost) and then as notifications arrive."""

    async def scenario() -> int:
        wakes: list[float] = []
        session = DbSession(db_dsn, "listen", connect_timeout=5)
        listener = WakeListener(session, "outbox", lambda: wakes.append(time.monotonic()), 0.0)
        listener.start()
        try:
            async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as admin:
                while not wakes:
                    await asyncio.sleep(0.01)
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE '%listen%' AND pid <> pg_backend_pid()"
                )
                before = len(wakes)
                while len(wakes) == before:  # the wake-up that follows the new LISTEN
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                before = len(wakes)
                await admin.execute("SELECT pg_notify(%s, '')", (channel_name("outbox"),))
                while len(wakes) == before:
                    await asyncio.sleep(0.01)
            return len(wakes)
        finally:
            await listener.stop()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) >= 3


def test_an_outbox_added_to_a_listening_relay_looks_once_when_its_channel_is_listened_to(
    db_dsn,
):
    """In a relay of many outboxes, one that joins later is listened to at the next sync:
    what its writers notified before then reached nobody, so it looks for work once."""

    async def scenario() -> tuple[int, int]:
        woken = {"a": 0, "b": 0}
        listener = SharedListener(DbSession(db_dsn, "listen", connect_timeout=5), 0.0)
        listener.add("a", lambda: woken.__setitem__("a", woken["a"] + 1))
        try:
            while not woken["a"]:  # the look that follows the first LISTEN
                await asyncio.sleep(0.01)
            listener.add("b", lambda: woken.__setitem__("b", woken["b"] + 1))
            deadline = time.monotonic() + 5 * SharedListener.SYNC_EVERY
            while not woken["b"] and time.monotonic() < deadline:  # no NOTIFY is sent
                await asyncio.sleep(0.01)
            return woken["a"], woken["b"]
        finally:
            await listener.stop()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == (1, 1)
