"""kill -9 of relays that each drain several outboxes (two databases): nothing lost, no
key reordered in either outbox (docs/multi-tenant.md)."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from relay.migrations import migrate
from tests.faults.conftest import kafka_args
from tests.faults.support import Figures, Workload, assert_clean, judge, read_everything
from tests.support.services import create_database, drop_database
from tests.support.written_log import record_writes

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.fixture
def second_outbox(pg_dsn):
    name = f"t_{secrets.token_hex(4)}"
    dsn = create_database(pg_dsn, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
    record_writes(dsn)
    yield dsn
    drop_database(pg_dsn, name)


def test_kill_9_of_relays_that_drain_two_outboxes_loses_and_reorders_nothing(
    outbox, second_outbox, kafka, relays, report
):
    works = [
        Workload(dsn, kafka.new_topic(partitions=3), keys=40) for dsn in (outbox, second_outbox)
    ]
    for work in works:
        work.backlog(3000)
        work.start_writer(per_second=100)
    args = [*kafka_args(kafka.bootstrap), "--dsn", second_outbox]
    group = [relays(*args), relays(*args)]
    try:
        for round_ in range(2):
            for work in works:
                work.wait_progress(since=(round_ + 1) * 1000, timeout=60)
            group.pop(0).kill()  # SIGKILL: its batches in flight are neither marked nor released
            group.append(relays(*args))
    finally:
        for work in works:
            work.stop_writer()
    for number, work in enumerate(works):
        work.wait_drained(timeout=90)
        expected = work.expected()
        received = read_everything(lambda n, t, w=work: kafka.read(w.topic, n, t), expected)
        figures = judge(
            Figures(f"kill -9, relays of two outboxes: outbox {number}"), received, expected
        )
        report(figures)
        assert_clean(figures)
    for survivor in group:
        # A relay still starting (its modules, its connections) dies of SIGTERM's default
        # action; the ones started after the kills must first be up to be survivors.
        survivor.wait_for_log(" started (", timeout=60)
        assert survivor.terminate() == 0
