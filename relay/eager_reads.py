"""A psycopg connection that reads what has already arrived before it waits.

psycopg's asyncio connection hands every wait to the event loop: register the socket,
run a loop round, unregister. libpq reads at most its input buffer (~16 KB) per call,
so a large claim takes many loop round trips, each one dearer than the read it waited
for (benchmarks/README.md has the measurement). While the socket already holds data, this
connection answers those waits itself, from a zero-timeout poll, for at most
EAGER_READ_BUDGET seconds before it lets the loop run again. Writes and waits with
nothing to read go to psycopg's own wait as before.
"""

from __future__ import annotations

import select
from time import monotonic
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.waiting import Ready, Wait

RV = TypeVar("RV")

# How long reads may go on here, without a turn of the event loop, while a result streams
# in. A claim's result arrives within a few milliseconds; other coroutines (the other lane,
# delivery reports) wait this much longer at most than psycopg's own wait lets them (it
# skips the loop for writes for up to its own MAX_BUSY_TIME).
EAGER_READ_BUDGET = 0.002

# psycopg wakes a wait every 0.1 s, so that a synchronous caller sees Ctrl-C; under
# asyncio a cancellation reaches the awaiting task at once, so those wake-ups only cost:
# ten a second for a LISTEN connection with nothing to hear. A wait still ends at its
# own timeout, and as soon as the socket is ready.
WAIT_INTERVAL = 60.0


class EagerReadConnection(psycopg.AsyncConnection[Any]):
    """``psycopg.AsyncConnection`` whose waits to read skip the event loop while the
    socket already has data (see the module's docstring)."""

    async def wait(
        self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None
    ) -> RV:
        eager = read_what_arrived(gen, self.pgconn.socket)
        return await super().wait(eager, interval=max(interval, WAIT_INTERVAL), timeout=timeout)


def read_what_arrived(gen: PQGen[RV], fileno: int) -> PQGen[RV]:
    """Drive ``gen``, answering its waits to read from a zero-timeout poll while data is
    waiting on ``fileno`` (within the budget); yield every other wait to the caller."""
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    budget_ends = monotonic() + EAGER_READ_BUDGET
    try:
        wait = next(gen)
        while True:
            if wait == Wait.R and poller.poll(0) and monotonic() < budget_ends:
                wait = gen.send(Ready.R)
                continue
            ready = yield wait
            if wait == Wait.R:  # the loop had its turn (a write may not have given it one)
                budget_ends = monotonic() + EAGER_READ_BUDGET
            wait = gen.send(ready)
    except StopIteration as done:
        result: RV = done.value
        return result
