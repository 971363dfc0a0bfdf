"""OverrunWatch: asyncio.timeout's outcome for a call that overruns, one timer for all."""

import asyncio

import pytest

from relay.overrun import OverrunWatch

LOOK = 0.01  # the watch's check interval in these tests


async def watched(watch, work, within):
    """``work()`` under ``watch`` the way the breaker layer calls a connector:
    "overran", or what it returned."""
    task = asyncio.current_task()
    cancelling = task.cancelling()
    watch.start(task, within)
    try:
        return await work()
    except asyncio.CancelledError:
        if not watch.overran(task, cancelling):
            raise
        return "overran"
    finally:
        watch.stop(task)


def test_a_call_past_its_deadline_is_abandoned_soon_after_and_leaves_no_cancel_behind():
    async def scenario():
        watch = OverrunWatch(LOOK)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await watched(watch, lambda: asyncio.sleep(30), 0.05)
        took = loop.time() - started
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0)  # no CancelledError is still on its way to this task
        return result, took

    result, took = asyncio.run(scenario())
    assert result == "overran"
    assert 0.05 <= took < 0.05 + LOOK + 1.0


def test_a_stop_requested_while_the_call_overruns_wins():
    async def scenario():
        watch = OverrunWatch(LOOK)
        task = None
        look = watch._look

        def look_then_stop():
            look()  # the watch cancels the overrunning call ...
            task.cancel()  # ... and, in the same turn, whoever stops the relay

        watch._look = look_then_stop
        task = asyncio.ensure_future(watched(watch, lambda: asyncio.sleep(30), 0.01))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_calls_in_time_are_left_alone_and_an_idle_watch_keeps_no_timer(monkeypatch):
    async def scenario():
        watch = OverrunWatch(LOOK)
        loop = asyncio.get_running_loop()
        timers = 0
        call_later = loop.call_later

        def counting(delay, callback, *args):
            nonlocal timers
            timers += callback == watch._look  # asyncio.sleep's own timers aside
            return call_later(delay, callback, *args)

        monkeypatch.setattr(loop, "call_later", counting)
        for _ in range(50):  # a publish every 2 ms, each well within its deadline
            assert await watched(watch, lambda: asyncio.sleep(0.001), 5) is None
            await asyncio.sleep(0.001)
        assert timers <= 50 * 0.003 / LOOK + 2  # one a look, not one a call
        await asyncio.sleep(3 * LOOK)
        assert watch._timer is None  # nothing watched: no timer
        assert await watched(watch, lambda: asyncio.sleep(30), 0.02) == "overran"

    asyncio.run(scenario())


def test_a_call_that_swallows_the_cancel_still_leaves_none_behind():
    async def scenario():
        watch = OverrunWatch(LOOK)

        async def stubborn():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return "returned anyway"

        assert await watched(watch, stubborn, 0.02) == "returned anyway"
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0.01)  # and the task goes on uncancelled

    asyncio.run(scenario())
