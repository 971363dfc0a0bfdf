"""Whether the claim lanes share the leased buckets, or lane 0 claims them all.

Lanes are for backlogs: while one lane's batch is with the broker, another lane's claim
runs in PostgreSQL. At a service's usual rate every NOTIFY brings a row or two, and every
lane it woke ran a claim; all but one found nothing, each paying a wake-up and two round
trips. So until a claim comes back full, lane 0 claims every leased bucket and the other
lanes wait. A full batch (a backlog) spreads the buckets over every lane again, until
every lane's last round was short of a full batch.

Per-key order holds across a switch as it does between relays: a lane claims only rows
of buckets it locked in its own transaction, in a snapshot taken after the lock, so a
bucket whose batch is still in flight in another lane is skipped until that batch is
acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable


class LaneSpread:
    """Which lanes claim, and which share of the buckets each takes; shared by the lanes."""

    def __init__(
        self, lanes: int, full_batch: int, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.lanes = lanes
        self._full_batch = full_batch
        self._on_change = on_change  # wakes the lanes that claim now
        self.spread = False
        self._full: set[int] = set()  # spread lanes whose last round claimed a full batch

    def claims(self, lane: int) -> bool:
        """Whether ``lane`` claims now: lane 0 always, the others while spread."""
        return lane == 0 or self.spread

    def claiming(self) -> int:
        """How many lanes claim now."""
        return self.lanes if self.spread else 1

    def share(self, lane: int) -> tuple[int, int]:
        """``(lane, lanes)``: ``lane`` claims the buckets equal to it modulo ``lanes``."""
        return (lane, self.lanes) if self.spread else (0, 1)

    def round_done(self, lane: int, claimed: int) -> bool:
        """Count a lane's round; True when the lanes spread or gathered (and were woken:
        rows a lane left behind when it stopped claiming are lane 0's now)."""
        full = claimed >= self._full_batch
        if not self.spread:
            if not (full and lane == 0 and self.lanes > 1):
                return False
            self.spread = True
            self._full = set(range(self.lanes))  # each lane claims once before gathering
        elif full:
            self._full.add(lane)
            return False
        else:
            self._full.discard(lane)
            if self._full:
                return False
            self.spread = False
        self._on_change()
        return True
