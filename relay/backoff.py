"""Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): delay = random(0, min(cap, base * 2**attempt))."""

from __future__ import annotations

import random


def full_jitter(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
    ceiling = min(cap, base * (2 ** min(attempt, 62)))
    return (rng or random).uniform(0.0, ceiling)
