"""The listening flag's state machine (relay.poll.wakeups), against a recording connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from relay.poll.wakeups import IDLE_ROUNDS, RATE_WINDOW, WakeupSwitch


class RecordingConnection:
    def __init__(self) -> None:
        self.flags: list[bool] = []

    async def execute(self, _query, params):
        self.flags.append(params["listening"])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def rounds(switch, conn, clock, lane, rows_per_second, seconds, every=0.01):
    for _ in range(round(seconds / every)):
        clock.now += every
        await switch.round_done(conn, lane, claimed=round(rows_per_second * every))


def test_writers_go_quiet_only_once_every_lane_finds_rows_fast_enough():
    async def scenario():
        clock, conn = Clock(), RecordingConnection()
        switch = WakeupSwitch("outbox", uuid.uuid4(), lanes=2, quiet_rate=1000, clock=clock)
        await rounds(switch, conn, clock, 0, 5000, 3 * RATE_WINDOW)
        assert switch.listening and conn.flags == []  # lane 1 has found nothing yet
        await rounds(switch, conn, clock, 1, 500, 3 * RATE_WINDOW)
        assert switch.listening  # lane 1 is too slow to poll for
        await rounds(switch, conn, clock, 1, 2000, 2 * RATE_WINDOW)
        assert not switch.listening and conn.flags == [False]
        assert switch.keeps_polling(0) and switch.keeps_polling(1)

    asyncio.run(scenario())


def test_a_lane_that_runs_dry_asks_for_notify_again_and_looks_once_more():
    async def scenario():
        clock, conn = Clock(), RecordingConnection()
        switch = WakeupSwitch("outbox", uuid.uuid4(), lanes=1, quiet_rate=1000, clock=clock)
        await rounds(switch, conn, clock, 0, 3000, 2 * RATE_WINDOW)
        assert not switch.listening
        for _ in range(IDLE_ROUNDS - 1):
            await switch.round_done(conn, 0, claimed=0)
            assert switch.keeps_polling(0)  # a pause in the traffic: keep polling
        await switch.round_done(conn, 0, claimed=0)
        assert not switch.keeps_polling(0)
        epoch = switch.epoch
        assert await switch.before_waiting(conn, 0, epoch) is True  # look once more first
        assert switch.listening and conn.flags == [False, True]
        assert await switch.before_waiting(conn, 0, switch.epoch) is False  # looked since
        assert conn.flags == [False, True]
        await switch.round_done(conn, 0, claimed=100_000)
        assert switch.listening  # quiet again only after a whole busy window

    asyncio.run(scenario())


def test_a_lane_whose_round_began_before_another_lane_ended_the_quiet_looks_again():
    async def scenario():
        clock, conn, woken = Clock(), RecordingConnection(), []
        switch = WakeupSwitch(
            "outbox",
            uuid.uuid4(),
            lanes=2,
            quiet_rate=1000,
            clock=clock,
            on_quiet=lambda: woken.append(True),
        )
        for lane in (0, 1):
            await rounds(switch, conn, clock, lane, 3000, 2 * RATE_WINDOW)
        assert not switch.listening and woken == [True]  # waiting lanes are woken to poll
        began = switch.epoch  # lane 1 starts a round
        assert await switch.before_waiting(conn, 0, switch.epoch) is True  # lane 0 ran dry
        assert await switch.before_waiting(conn, 1, began) is True  # lane 1 looks again too
        assert conn.flags == [False, True]

    asyncio.run(scenario())


def test_a_failed_update_leaves_the_flag_as_it_was():
    class Failing(RecordingConnection):
        async def execute(self, _query, params):
            raise OSError("connection lost")

    async def scenario():
        clock = Clock()
        switch = WakeupSwitch("outbox", uuid.uuid4(), lanes=1, quiet_rate=1, clock=clock)
        clock.now += RATE_WINDOW
        with pytest.raises(OSError):
            await switch.round_done(Failing(), 0, claimed=100)
        assert switch.listening  # writers keep notifying: the safe side

    asyncio.run(scenario())
