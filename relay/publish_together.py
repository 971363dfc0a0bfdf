"""Several outboxes' batches in one connector call (a relay of many CDC outboxes).

At 1,000 msg/s spread over ten tenants, each outbox of a shared slot publishes a batch
of one or two messages at a time, where a relay of one outbox publishes one batch of
ten: every call's fixed cost (the connector's bookkeeping, librdkafka's wake-up, the
delivery report's hop back to the event loop) is paid ten times. ``PublishTogether``
wraps the process's connector; each outbox publishes through a ``member()`` of it, and
the batches that members hand in while a call is with the broker go together in the
next call, their outcomes split back per member. A batch that finds no call in flight
goes at once (in the same turn of the event loop as any others handed in with it).

What each outbox keeps:

- Per-key order: a member hands in its next batch only once its last one returned, and
  its messages keep their order inside the joint call.
- Isolation: a member's outcomes are its own slice, decided by its own publisher (set
  aside, dead letters, backoff). Batches whose keys meet do not share a call: a
  connector that refuses a message holds back the later messages of its key in the
  same call (``relay.refusals``), which must not reach another tenant's key of the same
  name. A member whose last call did not deliver everything publishes alone until one
  does, so a tenant whose messages time out does not hold the others' batches with it
  more than once; and a batch waits behind a call in flight at most ``WAIT_BEHIND``
  before it goes on its own.
- A failure of the whole call (the connector raised) is every member's, as it would
  be: they share the producer and the circuit breaker anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.connector import Connector
from relay.decorators import ConnectorWrapper
from relay.model import OutboxMessage, Outcome
from relay.tasks import BackgroundTask

# How long a batch may wait behind a joint call in flight before it goes in a call of
# its own: far above a healthy call's few milliseconds, far below the publish timeout.
WAIT_BEHIND = 0.05


@dataclass(eq=False)
class _Handed:
    """One member's batch waiting for, or in, a joint call."""

    batch: Sequence[OutboxMessage]
    timeout: float
    done: asyncio.Future[list[Outcome]]


class PublishTogether(ConnectorWrapper):
    """The process's connector, with the batches handed in together sent as one call."""

    def __init__(self, inner: Connector) -> None:
        super().__init__(inner)
        self._waiting: list[_Handed] = []
        self._in_flight = 0  # joint calls with the broker
        self._flush_due = False
        self._late: asyncio.TimerHandle | None = None
        self._calls: set[BackgroundTask] = set()
        self.calls = 0  # joint calls made (for tests and benchmarks)

    def member(self) -> TogetherMember:
        """What one outbox publishes through."""
        return TogetherMember(self)

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        """``batch`` in a call of its own, at once."""
        return await self.inner.publish(batch, timeout=timeout)

    def hand_in(
        self, batch: Sequence[OutboxMessage], timeout: float
    ) -> asyncio.Future[list[Outcome]]:
        """Queue ``batch`` for the next joint call; its outcomes arrive in the future."""
        loop = asyncio.get_running_loop()
        handed = _Handed(batch, timeout, loop.create_future())
        self._waiting.append(handed)
        if self._in_flight == 0:
            self._flush_soon(loop)
        elif self._late is None:
            self._late = loop.call_later(WAIT_BEHIND, self._flush)
        return handed.done

    def _flush_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what waits: one call, or more where batches' keys meet."""
        self._flush_due = False
        if self._late is not None:
            self._late.cancel()
            self._late = None
        waiting, self._waiting = [h for h in self._waiting if not h.done.done()], []
        for group in _disjoint_groups(waiting):
            self._start(group)

    def _start(self, group: list[_Handed]) -> None:
        """The call in a task of its own: a member that gives up waiting does not cut it
        off for the others in it."""
        self._in_flight += 1
        call = BackgroundTask("publish-together", lambda: self._call(group, call))
        self._calls.add(call)
        call.start()

    async def _call(self, group: list[_Handed], call: BackgroundTask) -> None:
        self.calls += 1
        try:
            batch = group[0].batch if len(group) == 1 else [m for h in group for m in h.batch]
            try:
                outcomes = await self.inner.publish(batch, timeout=min(h.timeout for h in group))
            except Exception as exc:
                for handed in group:
                    if not handed.done.done():
                        handed.done.set_exception(exc)
                return
            except BaseException:
                for handed in group:
                    handed.done.cancel()
                raise
            start = 0
            for handed in group:
                end = start + len(handed.batch)
                if not handed.done.done():
                    handed.done.set_result(list(outcomes[start:end]))
                start = end
        finally:
            self._calls.discard(call)  # referenced until here, as the loop's are weak
            self._in_flight -= 1
            if self._waiting and self._in_flight == 0:
                self._flush_soon(asyncio.get_running_loop())


def _disjoint_groups(waiting: list[_Handed]) -> list[list[_Handed]]:
    """The batches in calls whose keys do not meet, in the order they were handed in."""
    if len(waiting) <= 1:
        return [waiting] if waiting else []
    groups: list[tuple[list[_Handed], set[str]]] = []
    for handed in waiting:
        keys = {m.key for m in handed.batch if m.key is not None}
        for members, taken in groups:
            if taken.isdisjoint(keys):
                members.append(handed)
                taken |= keys
                break
        else:
            groups.append(([handed], keys))
    return [members for members, _ in groups]


class TogetherMember:
    """One outbox's way into a ``PublishTogether``: a connector to the decorators above."""

    def __init__(self, together: PublishTogether) -> None:
        self._together = together
        self.name = together.name
        self._alone = False  # its last call did not deliver everything

    async def open(self) -> None:
        """The process opens the shared connector."""

    async def close(self, *, timeout: float) -> None:
        """The process closes the shared connector."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._together.inner, name)

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        if not batch:
            return []
        alone, self._alone = self._alone, True  # until this call delivered everything
        if alone:
            outcomes = await self._together.publish(batch, timeout=timeout)
        else:
            # Cancelled, this cancels the future: the joint call goes on without it.
            outcomes = await self._together.hand_in(batch, timeout)
        self._alone = not all(o.delivered for o in outcomes)
        return outcomes
