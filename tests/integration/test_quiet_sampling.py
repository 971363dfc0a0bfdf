"""The backlog sampler reads a quiet outbox (nothing pending, no held keys, nothing seen
by the relay since) less often, and at once when the relay sees something of it."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from relay import enqueue, operability
from relay.config import RelayConfig
from relay.health import HealthState
from relay.metrics import RelayMetrics
from relay.operability import BacklogSampler, SampleTarget
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration


def write_one(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn) as conn, conn.transaction():
        enqueue(conn, topic="orders", key="k", payload={}, schema=schema)


def test_a_quiet_outbox_is_read_again_when_the_relay_sees_it_move_or_after_a_while(
    db_dsn, monkeypatch
):
    monkeypatch.setattr(operability, "QUIET_SAMPLE_EVERY", 1.0)
    for schema in ("seen", "unseen"):
        install_outbox(db_dsn, schema)
    activity = {"seen": 0}
    metrics = {schema: RelayMetrics() for schema in ("seen", "unseen")}
    targets = [
        SampleTarget("seen", metrics["seen"], HealthState(), lambda _conn: {},
                     lambda: activity["seen"]),
        # None: the relay cannot tell (polling), so read every round
        SampleTarget("unseen", metrics["unseen"], HealthState(), lambda _conn: {}),
    ]

    def pending() -> dict[str, float]:
        return {schema: m.pending._value.get() for schema, m in metrics.items()}

    async def scenario():
        sampler = BacklogSampler(RelayConfig(dsn=db_dsn), targets)
        try:
            rounds = []
            await sampler.sample_once()  # both quiet
            await asyncio.to_thread(write_one, db_dsn, "seen")
            await asyncio.to_thread(write_one, db_dsn, "unseen")
            await sampler.sample_once()
            rounds.append(pending())  # "seen" skipped: the relay saw nothing of it
            activity["seen"] += 1  # its stream brought the insert
            await sampler.sample_once()
            rounds.append(pending())
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM seen.messages")
                conn.execute("DELETE FROM unseen.messages")
            await sampler.sample_once()  # pending: read every round until quiet again
            rounds.append(pending())
            await asyncio.to_thread(write_one, db_dsn, "seen")  # and unseen by the relay
            await sampler.sample_once()
            rounds.append(pending())
            await asyncio.sleep(1.1)
            await sampler.sample_once()  # QUIET_SAMPLE_EVERY later: read all the same
            rounds.append(pending())
            return rounds
        finally:
            await sampler.stop()

    assert asyncio.run(scenario()) == [
        {"seen": 0, "unseen": 1},
        {"seen": 1, "unseen": 1},
        {"seen": 0, "unseen": 0},
        {"seen": 0, "unseen": 0},
        {"seen": 1, "unseen": 0},
    ]
