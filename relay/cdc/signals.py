"""Events the streaming session waits on several times per transaction, cheaply.

``relay.tasks.wait_any`` wraps each event's ``wait()`` in a task and waits for them with
``asyncio.wait``: fine for occasional waits. The session's publisher and progress loops
wait a few times for every transaction, and at one message per transaction those tasks,
their cancellations and ``asyncio.wait``'s callbacks took more of the relay's CPU than
decoding and publishing the message. A ``Signal`` is an ``asyncio.Event`` (everything
that waits on an event still can) that also resolves the future of each
``wait_signals`` call directly: one future, and at most one timer, per wait.
"""

from __future__ import annotations

import asyncio


class Signal(asyncio.Event):
    """An ``asyncio.Event`` that ``wait_signals`` can wait on without a task."""

    def __init__(self) -> None:
        super().__init__()
        self._futures: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        super().set()
        for future in self._futures:
            _resolve(future)


async def wait_signals(*signals: Signal, timeout: float | None = None) -> None:
    """Return once any of ``signals`` is set, or after ``timeout`` seconds."""
    if any(signal.is_set() for signal in signals):
        return
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    timer = None if timeout is None else loop.call_later(timeout, _resolve, future)
    for signal in signals:
        signal._futures.add(future)
    try:
        await future  # a cancellation of the caller cancels the future and ends here
    finally:
        if timer is not None:
            timer.cancel()
        for signal in signals:
            signal._futures.discard(future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
