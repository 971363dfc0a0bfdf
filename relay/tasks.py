"""Background tasks and waits, written once for every long-running piece.

Waits never use ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that
arrives just as the awaited thing completes, and a loop around it then never stops.
``asyncio.wait`` does not do that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Signal(asyncio.Event):
    """An ``asyncio.Event`` that ``wait_any`` waits on without a task of its own.

    ``wait_any`` over plain events needs a task per event and ``asyncio.wait``: two more
    turns of the event loop per wait, their cancellations and ``asyncio.wait``'s
    callbacks. A claim lane waits once per round and the CDC session's publisher and
    progress loops a few times per transaction; at one message per transaction those
    tasks cost more than the message. Setting a Signal also resolves the future each
    ``wait_any`` left on it: one future, and at most one timer, per wait. It stays an
    event: anything that waits on an event can wait on it.
    """

    def __init__(self) -> None:
        super().__init__()
        # not "_waiters": asyncio.Event keeps its own waiters under that name. A set:
        # each of the many waits on one Signal (a fleet's) leaves it in O(1).
        self._watchers: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        super().set()
        for waiter in self._watchers:
            _resolve(waiter)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return once any of ``events`` is set, or after ``timeout`` seconds."""
    if any(event.is_set() for event in events):
        return
    signals = [event for event in events if isinstance(event, Signal)]
    if len(signals) == len(events):
        await _wait_for_signals(signals, timeout)
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _wait_for_signals(signals: list[Signal], timeout: float | None) -> None:
    """``wait_any`` of Signals: one future, resolved by the first Signal set or a timer."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    timer = None if timeout is None else loop.call_later(timeout, _resolve, woken)
    for signal in signals:
        signal._watchers.add(woken)
    try:
        await woken  # cancelling the caller cancels the future and ends the wait
    finally:
        for signal in signals:
            signal._watchers.discard(woken)
        if timer is not None:
            timer.cancel()


async def wait_future(future: asyncio.Future[Any], timeout: float) -> None:
    """Return once ``future`` is done or after ``timeout`` seconds; cancel it if not."""
    try:
        await asyncio.wait({future}, timeout=timeout)
    finally:
        future.cancel()


async def result_within(future: asyncio.Future[T], timeout: float) -> T:
    """``future``'s result, or TimeoutError after ``timeout`` seconds. The future is left
    running (not cancelled) on a timeout: the caller decides what becomes of it."""
    done, _ = await asyncio.wait({future}, timeout=timeout)
    if not done:
        raise TimeoutError
    return future.result()


async def bounded(step: Awaitable[None], timeout: float, what: str) -> None:
    """Await one step of a shutdown for at most ``timeout`` seconds: a database or broker
    that stopped answering cannot keep the process from exiting."""
    try:
        async with asyncio.timeout(timeout):
            await step
    except TimeoutError:
        log.warning("stopping the %s took over %.0fs; going on without it", what, timeout)


class BackgroundTask:
    """One named task running ``work`` beside the drain: ``start`` twice, or ``stop``
    before ``start`` or twice, is harmless.

    ``stop`` cancels the task by default. A piece that must finish a step cleanly (the
    lease keeper mid-renewal) asks its own loop to end and passes ``cancel=False``.
    """

    def __init__(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._work = work
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._work(), name=self.name)

    async def finished(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the task to end on its own; True if it did
        (or never started)."""
        if self._task is None:
            return True
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        return bool(done)

    async def stop(self, *, cancel: bool = True) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if cancel:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
