"""Abandon a call that overran its deadline, as ``asyncio.timeout`` would, with one timer
for every call watched instead of a timer each.

The breaker layer bounds every publish (``relay.decorators``). At light traffic every
publish is a batch of one message, and ``asyncio.timeout``'s timer (a handle made,
pushed on the loop's heap and cancelled, and the context's own bookkeeping) cost about
as much as the rest of the breaker layer. The deadlines here are looked at every
``CHECK_EVERY`` seconds while calls are being watched, so an overrun is abandoned up to
that much after its deadline; an idle relay has no timer at all.

Cancellation follows ``asyncio.timeout``: the watched task is cancelled, and the caller
turns that CancelledError into its own failure only when nobody else cancelled the task
meanwhile (``Task.cancelling``/``uncancel``); a stop requested at the same time wins.
"""

from __future__ import annotations

import asyncio

CHECK_EVERY = 0.25  # seconds between two looks at the deadlines while calls are watched


class OverrunWatch:
    """Deadlines of the calls in progress, by the task making each."""

    def __init__(self, check_every: float = CHECK_EVERY) -> None:
        self._check_every = check_every
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()  # cancelled by the watch
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0  # calls watched since the last look

    def start(self, task: asyncio.Task[object], within: float) -> None:
        """Watch ``task``'s call, due within ``within`` seconds from now."""
        loop = asyncio.get_running_loop()
        self._deadlines[task] = loop.time() + within
        self._started += 1
        if self._timer is None or self._loop is not loop:  # a new loop: a timer of its own
            self._loop = loop
            self._timer = loop.call_later(self._check_every, self._look)

    def overran(self, task: asyncio.Task[object], cancelling: int) -> bool:
        """For a CancelledError in ``task``'s call: was it this watch's, and is it the only
        cancellation (``cancelling``: ``task.cancelling()`` when the call began)?"""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() <= cancelling

    def stop(self, task: asyncio.Task[object]) -> None:
        """The call ended (after ``overran`` when it raised)."""
        self._deadlines.pop(task, None)
        if task in self._expired:  # cancelled, but the call returned anyway
            self._expired.discard(task)
            task.uncancel()

    def _look(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for task, deadline in self._deadlines.items():
            if now >= deadline and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        if self._deadlines or self._started:
            self._started = 0
            self._timer = self._loop.call_later(self._check_every, self._look)
        else:
            self._timer = None
