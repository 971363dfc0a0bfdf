"""Notifications read in an event-loop callback while the listening connection is idle.

psycopg's ``notifies()`` is an async generator over a wait: per notification, a lock,
a reader added to and removed from the loop, a timer, a future and a turn of the loop
for the task awaiting it, all to learn a channel name. Here the connection's socket
stays registered with the loop, and its callback reads what arrived and calls the
wake-ups directly. The connection is used for nothing else meanwhile: ``stop()`` takes
the socket back before a statement (LISTEN, UNLISTEN) runs on it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import psycopg

from relay.tasks import Signal, wait_any


class NotifyReader:
    """Calls ``deliver(channels)`` with the channels that notified, from the loop's
    reader callback. A delivery that came within ``pause_within`` pauses of the last
    stops reading for ``pause`` seconds, so a burst is delivered in one go."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        deliver: Callable[[set[str]], None],
        *,
        pause: float,
        pause_within: float,
    ) -> None:
        self._conn = conn
        self._encoding = conn.info.encoding
        self._deliver = deliver
        self._pause = pause
        self._pause_within = pause_within
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._last_delivery = -math.inf
        self._broken = Signal()
        self._error: psycopg.Error | None = None

    def start(self) -> None:
        """Read notifications as they arrive (the connection must be idle)."""
        if self._fd is None and self._paused is None and self._error is None:
            self._fd = self._conn.fileno()
            self._loop.add_reader(self._fd, self._read)

    def stop(self) -> None:
        """Leave the socket to the connection (before it runs a statement)."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None

    async def wait(self, timeout: float) -> None:
        """Up to ``timeout`` seconds; raises the connection's error if it broke."""
        await wait_any(self._broken, timeout=timeout)
        if self._error is not None:
            raise self._error

    def _read(self) -> None:
        pgconn = self._conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error as exc:
            self.stop()
            self._error = exc
            self._broken.set()
            return
        channels = set()
        while (notification := pgconn.notifies()) is not None:
            channels.add(notification.relname.decode(self._encoding))
        if channels:
            self._deliver(channels)
            self._pause_if_busy()

    def _pause_if_busy(self) -> None:
        now = time.monotonic()
        if self._pause > 0 and now - self._last_delivery < self._pause_within * self._pause:
            self._hold()
        self._last_delivery = now

    def _hold(self) -> None:
        """Stop reading for a pause: the notifications right behind gather meanwhile."""
        self.stop()
        self._paused = self._loop.call_later(self._pause, self._resume)

    def _resume(self) -> None:
        self._paused = None
        self.start()
        self._read()  # what arrived during the pause, in one go
