"""Relays that die (kill -9) or freeze (SIGSTOP) mid-drain: nothing lost, no key reordered."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from tests.faults.conftest import kafka_args
from tests.faults.support import (
    Figures,
    Workload,
    assert_clean,
    hold_fault,
    judge,
    read_everything,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def relay_id_of(dsn: str, pid: int) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT relay_id::text FROM outbox.relays WHERE name LIKE %s", (f"%:{pid}",)
        ).fetchone()
    return row[0] if row else None


def buckets_leased_by(dsn: str, relay_ids: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox.bucket_leases "
            "WHERE expires_at > now() AND relay_id::text = ANY(%s)",
            (relay_ids,),
        ).fetchone()
    return int(row[0]) if row else 0


def wait_for_relay_row(dsn: str, pid: int) -> str:
    wait_for(lambda: relay_id_of(dsn, pid) is not None, 20, f"relay {pid} to register")
    found = relay_id_of(dsn, pid)
    assert found is not None
    return found


def test_kill_9_during_a_drain_three_times(outbox, kafka, relays, report):
    topic = kafka.new_topic(partitions=3)
    work = Workload(outbox, topic, keys=40)
    work.backlog(6000)
    work.start_writer(per_second=200)
    args = kafka_args(kafka.bootstrap)
    group = [relays(*args), relays(*args)]
    takeovers = []
    try:
        for round_ in range(3):
            work.wait_progress(since=(round_ + 1) * 1200, timeout=60)
            victim = group.pop(0)
            victim_id = wait_for_relay_row(outbox, victim.pid)
            wait_for(
                lambda v=victim_id: buckets_leased_by(outbox, [v]) == 128,
                30,
                "the relay to be killed to own its share of the buckets",
            )
            victim.kill()  # SIGKILL: its batch in flight is neither marked nor released
            killed_at = time.monotonic()
            group.append(relays(*args))
            live = [wait_for_relay_row(outbox, relay.pid) for relay in group]
            wait_for(
                lambda ids=live: buckets_leased_by(outbox, ids) == 256,
                30,
                "the killed relay's buckets to move",
            )
            takeovers.append(round(time.monotonic() - killed_at, 2))
    finally:
        work.stop_writer()
    drain = work.wait_drained(timeout=90)
    expected = work.expected()
    received = read_everything(lambda n, t: kafka.read(topic, n, t), expected)
    figures = judge(Figures("kill -9 mid-drain x3"), received, expected)
    figures.recovery_seconds = max(takeovers)
    figures.drain_seconds = round(drain, 2)
    figures.notes = {"bucket_takeover_seconds": takeovers}
    report(figures)
    assert_clean(figures)
    for survivor in group:
        assert survivor.terminate() == 0


def test_a_frozen_relay_does_not_publish_work_it_no_longer_owns(outbox, kafka, relays, report):
    topic = kafka.new_topic(partitions=3)
    work = Workload(outbox, topic, keys=40)
    work.backlog(4000)
    work.start_writer(per_second=200)
    args = kafka_args(kafka.bootstrap)
    frozen, other = relays(*args), relays(*args)
    try:
        work.wait_progress(since=800, timeout=60)
        other_id = wait_for_relay_row(outbox, other.pid)
        frozen_id = wait_for_relay_row(outbox, frozen.pid)
        wait_for(
            lambda: buckets_leased_by(outbox, [frozen_id]) == 128,
            30,
            "the relay to be frozen to own its share of the buckets",
        )
        os.kill(frozen.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            wait_for(
                lambda: buckets_leased_by(outbox, [other_id]) == 256,
                30,
                "the other relay to take every bucket",
            )
            takeover = time.monotonic() - frozen_at
            hold_fault(2.0)  # the other relay drains the frozen one's buckets meanwhile
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        frozen.wait_for_log("ran out", timeout=20)
    finally:
        work.stop_writer()
    drain = work.wait_drained(timeout=90)
    expected = work.expected()
    received = read_everything(lambda n, t: kafka.read(topic, n, t), expected)
    figures = judge(Figures("relay frozen past its leases"), received, expected)
    figures.recovery_seconds = round(takeover, 2)
    figures.drain_seconds = round(drain, 2)
    report(figures)
    assert_clean(figures)
    assert frozen.proc.poll() is None and other.proc.poll() is None
    assert frozen.terminate() == 0 and other.terminate() == 0
