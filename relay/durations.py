"""Durations on the command line: ``15``, ``1.5s``, ``500ms``, ``10m``, ``1h``, ``7d``,
and the ranges they must fall in.

Every duration is range-checked at startup: a value PostgreSQL (or the broker client)
cannot take would otherwise be accepted and then fail on every round, forever.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from relay.errors import ConfigError

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_DAY = 86400.0

# PostgreSQL takes its timeouts (statement_timeout, lock_timeout,
# idle_in_transaction_session_timeout, tcp_user_timeout) as int milliseconds, at most
# 2147483647 (24.8 days), and so do librdkafka's. Every timer of the relay stays in it.
MAX_TIMEOUT = 24 * _DAY
MIN_TIMEOUT = 0.001  # one millisecond: less rounds to 0, which PostgreSQL reads as "none"
# How far back an age (retention, dead-letter and inbox filters) may reach: now() minus
# the age must stay a timestamp, and PostgreSQL's start in 4713 BC.
MAX_AGE = 1_000_000 * _DAY
_PG_TIMEOUT = "PostgreSQL takes it as a timeout in milliseconds, at most 2147483647"
_PG_TIMESTAMPS = "older would be before PostgreSQL's first timestamp, in 4713 BC"


def parse_duration(text: str, what: str) -> float:
    match = _DURATION.fullmatch(text)
    if not match:
        raise ConfigError(
            f"the {what} {text!r} is not a duration; write seconds (15) or a number "
            "with a unit: 500ms, 15s, 10m, 1h, 7d"
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling parse_duration reads back: ``24d``, ``1h``, ``500ms``."""
    if seconds == 0:
        return "0"
    if math.isinf(seconds):
        return "forever"
    if seconds > 1e15:
        return f"{seconds:g}s"
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == round(count):
            return f"{count:.0f}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class DurationRange:
    """Where a duration setting must lie; ``zero`` names what 0 means when 0 is allowed."""

    low: float
    high: float
    zero: str | None = None
    reason: str | None = None

    def problem(self, what: str, seconds: float) -> str | None:
        """One sentence when ``seconds`` is outside the range, else None."""
        if self.low <= seconds <= self.high or (self.zero is not None and seconds == 0):
            return None
        low, high = format_duration(self.low), format_duration(self.high)
        span = f"between {low} and {high}"
        if self.zero is not None:
            span = (
                f"0 ({self.zero}) or {span}"
                if self.low > 0
                else f"between 0 ({self.zero}) and {high}"
            )
        given = format_duration(seconds) if seconds >= 0 else f"{seconds:g}s"
        why = f": {self.reason}" if self.reason else ""
        return f"The {what} ({given}) must be {span}{why}."

    def check(self, what: str, seconds: float) -> float:
        """``seconds``, or ConfigError when it is outside the range."""
        if problem := self.problem(what, seconds):
            raise ConfigError(problem[0].lower() + problem[1:-1])
        return seconds


PG_TIMEOUT = DurationRange(MIN_TIMEOUT, MAX_TIMEOUT, reason=_PG_TIMEOUT)
TIMER = DurationRange(MIN_TIMEOUT, MAX_TIMEOUT)
AGE = DurationRange(0.0, MAX_AGE, reason=_PG_TIMESTAMPS)


def parse_age(text: str, what: str) -> float:
    """A duration that reaches back from now (a filter or a window), range-checked."""
    return AGE.check(what, parse_duration(text, what))
