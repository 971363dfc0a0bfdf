"""The waits: a future with a timeout, events and Signals with a timeout."""

from __future__ import annotations

import asyncio

import pytest

from relay.tasks import Signal, wait_any, wait_future


def test_wait_future_returns_when_the_future_is_resolved() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.01, future.set_result, None)
        started = loop.time()
        await wait_future(future, timeout=5)
        return loop.time() - started

    assert asyncio.run(scenario()) < 1


def test_wait_future_gives_up_after_the_timeout_and_cancels_the_future() -> None:
    async def scenario() -> tuple[float, asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        started = loop.time()
        await wait_future(future, timeout=0.05)
        return loop.time() - started, future

    waited, future = asyncio.run(scenario())
    assert 0.04 <= waited < 1
    assert future.done()  # resolved by the timer: nothing will wake it later


def test_cancelling_the_waiter_cancels_the_future_and_is_not_swallowed() -> None:
    async def scenario() -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = asyncio.create_task(wait_future(future, timeout=30))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return future

    assert asyncio.run(scenario()).cancelled()


def test_wait_future_leaves_no_timer_behind() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        for _ in range(100):
            future: asyncio.Future[None] = loop.create_future()
            loop.call_soon(future.set_result, None)
            await wait_future(future, timeout=30)
        await asyncio.sleep(0)
        return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == 0


def test_wait_any_returns_on_the_first_event_or_the_timeout() -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        first, second = asyncio.Event(), asyncio.Event()
        loop.call_later(0.01, second.set)
        started = loop.time()
        await wait_any(first, second, timeout=5)
        woken = loop.time() - started
        started = loop.time()
        await wait_any(first, timeout=0.05)
        return woken, loop.time() - started

    woken, timed_out = asyncio.run(scenario())
    assert woken < 1 and 0.04 <= timed_out < 1



@pytest.mark.parametrize("kind", [asyncio.Event, Signal])
def test_wait_any_of_either_kind_returns_on_the_first_or_the_timeout(kind: type) -> None:
    async def scenario() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        first, second = kind(), kind()
        loop.call_later(0.01, second.set)
        started = loop.time()
        await wait_any(first, second, timeout=5)
        woken = loop.time() - started
        started = loop.time()
        await wait_any(first, timeout=0.05)
        timed_out = loop.time() - started
        loop.call_later(0.01, first.set)
        started = loop.time()
        await wait_any(first)  # no timeout
        return woken, timed_out, loop.time() - started

    woken, timed_out, untimed = asyncio.run(scenario())
    assert woken < 1 and 0.04 <= timed_out < 1 and untimed < 1


def test_wait_any_of_signals_starts_no_task_and_leaves_nothing_behind() -> None:
    async def scenario() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        stopping, wake = Signal(), Signal()
        tasks = len(asyncio.all_tasks())
        most = 0
        for _ in range(50):
            wake.clear()
            waiting = asyncio.ensure_future(wait_any(stopping, wake, timeout=30))
            await asyncio.sleep(0)  # it waits now
            most = max(most, len(asyncio.all_tasks()) - tasks)
            wake.set()
            await waiting
        await asyncio.sleep(0)
        timers = sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]
        return most, timers, len(stopping._watchers) + len(wake._watchers)

    # the one task is the waiting coroutine itself: no task per signal
    assert asyncio.run(scenario()) == (1, 0, 0)


def test_cancelling_a_wait_on_signals_is_not_swallowed_and_unhooks_it() -> None:
    async def scenario() -> int:
        wake = Signal()
        waiter = asyncio.create_task(wait_any(wake, timeout=30))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        wake.set()  # nobody is hooked on it any more
        return len(wake._watchers)

    assert asyncio.run(scenario()) == 0


def test_a_signal_set_before_the_wait_returns_at_once() -> None:
    async def scenario() -> bool:
        wake = Signal()
        wake.set()
        await wait_any(Signal(), wake, timeout=30)
        return wake.is_set() and not wake._watchers

    assert asyncio.run(scenario())


def test_a_wait_on_signals_ends_at_its_timeout_and_unhooks_it() -> None:
    async def scenario() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        quiet = Signal()
        started = loop.time()
        await wait_any(quiet, timeout=0.01)
        return loop.time() - started, len(quiet._watchers)

    waited, hooked = asyncio.run(scenario())
    assert 0.005 <= waited < 1 and hooked == 0


def test_a_signal_is_still_an_event() -> None:
    async def scenario() -> None:
        signal = Signal()
        waiter = asyncio.ensure_future(signal.wait())
        await asyncio.sleep(0)
        signal.set()
        assert await asyncio.wait_for(waiter, 1) is True
        signal.clear()
        assert not signal.is_set()

    asyncio.run(scenario())
