"""A light batch's acknowledgement rides with the next claim (relay.poll.poller)."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from relay.poll.leases import LeaseKeeper
from relay.poll.poller import Poller, claim_session
from relay.poll.source import duty_session
from relay.poll.wakeups import WakeupSwitch
from tests.integration.test_relay_core import listening, pending, write
from tests.support.fakes import InMemoryConnector
from tests.support.relays import RunningRelay, eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration


def lane(
    dsn: str, connector: InMemoryConnector, switch: WakeupSwitch | None = None
) -> tuple[Poller, LeaseKeeper]:
    config = relay_config(dsn, claim_lanes=1)
    relay_id = uuid.uuid4()
    leases = LeaseKeeper(
        duty_session(config, "leases"), schema="outbox", relay_id=relay_id,
        relay_name="rides", mode="poll", ttl=config.lease_ttl, on_change=lambda: None,
        published=lambda: 0,
    )  # fmt: skip
    if switch is not None:
        switch._relay_id = relay_id
    poller = Poller(
        config, claim_session(config), connector, leases, relay_id, asyncio.Event(), switch=switch
    )
    poller._last_claimed = 0  # a lane on light traffic
    return poller, leases


def test_a_light_batchs_acknowledgement_goes_with_the_next_claim(db_dsn):
    install_outbox(db_dsn)
    connector = InMemoryConnector()

    async def scenario() -> list[int]:
        poller, leases = lane(db_dsn, connector)
        left = []
        try:
            await leases.tick()
            write(db_dsn, 1)
            await poller.drain_once()
            left.append(pending(db_dsn))  # published, its acknowledgement waits
            write(db_dsn, 1)
            await poller.drain_once()
            left.append(pending(db_dsn))  # the first acknowledged with the second's claim
            await poller._waiting_ack.flush()
            left.append(pending(db_dsn))
        finally:
            await poller.close()
            await leases.stop()
        return left

    assert asyncio.run(scenario()) == [1, 1, 0]
    assert len(connector.published) == 2


def test_a_deferred_acknowledgement_lost_with_its_connection_is_published_again(db_dsn):
    install_outbox(db_dsn)
    connector = InMemoryConnector()

    async def scenario() -> None:
        poller, leases = lane(db_dsn, connector)
        try:
            await leases.tick()
            write(db_dsn, 1)
            await poller.drain_once()
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE %s AND datname = current_database()",
                    ("%claim-0%",),
                )
            result = await poller._drain_guarded()
            assert result.error is not None
            await poller._drain_guarded()  # a new connection: the row is claimed again
            await poller._waiting_ack.flush()
        finally:
            await poller.close()
            await leases.stop()

    asyncio.run(scenario())
    assert len(connector.published) == 2  # the same message twice: never lost
    assert connector.published[0].id == connector.published[1].id
    assert pending(db_dsn) == 0


def test_a_relay_stopped_with_an_acknowledgement_waiting_sends_it(db_dsn):
    install_outbox(db_dsn)

    async def scenario() -> None:
        async with RunningRelay(relay_config(db_dsn, claim_lanes=1)) as relay:
            await eventually(lambda: pending(db_dsn) == 0, 10, "the first message")
            write(db_dsn, 1)
            await eventually(lambda: len(relay.connector.published) >= 2, 10, "the second")

    write(db_dsn, 1)
    asyncio.run(scenario())
    assert pending(db_dsn) == 0


def test_writers_told_to_be_quiet_hear_it_even_if_a_waiting_batchs_connection_dies(db_dsn):
    """The flag's UPDATE goes in a transaction of its own: a busy round ends the waiting
    batch's transaction before it, so losing the connection then loses neither."""
    install_outbox(db_dsn)
    now = [0.0]
    switch = WakeupSwitch("outbox", uuid.uuid4(), 1, quiet_rate=0.001, clock=lambda: now[0])

    async def scenario() -> None:
        poller, leases = lane(db_dsn, InMemoryConnector(), switch)
        try:
            await leases.tick()
            write(db_dsn, 1)
            now[0] = 1.0  # a whole window has passed, at more than the quiet rate
            await poller.drain_once()
            assert not switch.listening
            await asyncio.to_thread(terminate_claim_connections, db_dsn)
            assert pending(db_dsn) == 0  # the batch's acknowledgement committed first
            assert listening(db_dsn) == [False]  # and the flag after it, on its own
        finally:
            await poller.close()
            await leases.stop()

    asyncio.run(scenario())


def terminate_claim_connections(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE %s AND datname = current_database()",
            ("%claim-0%",),
        )
