"""Signals: the streaming session's waits without a task per wait."""

from __future__ import annotations

import asyncio

import pytest

from relay.cdc.signals import Signal, wait_signals


def test_a_wait_ends_when_any_signal_is_set_and_leaves_nothing_registered() -> None:
    async def scenario() -> None:
        first, second = Signal(), Signal()
        waiting = asyncio.ensure_future(wait_signals(first, second))
        await asyncio.sleep(0)
        assert not waiting.done()
        assert len(asyncio.all_tasks()) == 2  # this one and the wait: no task per signal
        second.set()
        await asyncio.wait_for(waiting, 1)
        assert not first._futures and not second._futures

    asyncio.run(scenario())


def test_a_set_signal_returns_at_once_and_a_timeout_ends_the_wait() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        done = Signal()
        done.set()
        await wait_signals(done, Signal(), timeout=60)
        started = loop.time()
        quiet = Signal()
        await wait_signals(quiet, timeout=0.01)
        assert 0.005 <= loop.time() - started < 1
        assert not quiet._futures

    asyncio.run(scenario())


def test_cancelling_the_waiter_cancels_the_wait() -> None:
    async def scenario() -> None:
        signal = Signal()
        waiting = asyncio.ensure_future(wait_signals(signal, timeout=60))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not signal._futures
        signal.set()  # nobody waits: harmless

    asyncio.run(scenario())


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
