"""Waiting on events with a timeout, without ``asyncio.wait_for``.

On Python 3.11 ``wait_for`` can swallow a cancellation that arrives just as the awaited
thing completes; a loop around it then never stops. ``asyncio.wait`` does not do that.
"""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return once any of ``events`` is set, or after ``timeout`` seconds."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def wait_future(future: asyncio.Future[None], timeout: float) -> None:
    """Return once ``future`` is done or after ``timeout`` seconds; cancel it if not."""
    try:
        await asyncio.wait({future}, timeout=timeout)
    finally:
        future.cancel()
