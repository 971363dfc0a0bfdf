"""Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): delay = random(0, min(cap, base * 2**attempt))."""

from __future__ import annotations

import random
import time


def full_jitter(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
    ceiling = min(cap, base * (2 ** min(attempt, 62)))
    return (rng or random).uniform(0.0, ceiling)


# A session must have run this long before its failure counts as a first one again.
STABLE_AFTER = 10.0


class SessionBackoff:
    """The waits between sessions that fail (a replication stream): the backoff starts
    small again only after a session that ran for ``stable_after`` seconds, so one that
    fails right after it starts (a slot it cannot decode, say) is not retried at the
    base delay forever."""

    def __init__(self, *, base: float, cap: float, stable_after: float = STABLE_AFTER) -> None:
        self._base = base
        self._cap = cap
        self._stable_after = stable_after
        self._failures = 0
        self._started: float | None = None

    def started(self) -> None:
        """A session is under way."""
        self._started = time.monotonic()

    def next_delay(self) -> float:
        """Seconds to wait after a failure."""
        if self._started is not None and time.monotonic() - self._started >= self._stable_after:
            self._failures = 0
        self._started = None
        delay = full_jitter(self._failures, base=self._base, cap=self._cap)
        self._failures += 1
        return delay
