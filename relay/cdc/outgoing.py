"""Captured events waiting for the broker, and how far the WAL may be confirmed.

The stream appends events and position marks in commit order: a commit mark after the
last event of each transaction (its ``Commit.end_lsn``), an idle mark for a keepalive's
WAL end. Batches are taken from the front; a mark becomes confirmed once every event
before it is delivered (or parked). So the confirmed position never passes an event the
broker has not confirmed, and an idle stream confirms the server's WAL end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from uuid import UUID

from relay.model import OutboxMessage
from relay.tasks import Signal


@dataclass(frozen=True, slots=True)
class Unmappable:
    """A captured event that cannot be published (a malformed envelope, a Debezium row
    without a topic): it is parked with its raw content instead, never skipped silently."""

    id: UUID
    raw: bytes
    error: str
    position: int
    key: str | None = None


Item = OutboxMessage | Unmappable


@dataclass(frozen=True, slots=True)
class Mark:
    lsn: int
    commit: bool  # True after a transaction's events; False for an idle WAL end


@dataclass
class Batch:
    items: list[Item] = field(default_factory=list)
    marks: list[tuple[int, Mark]] = field(default_factory=list)  # (items before it, mark)


class Outgoing:
    """The queue between the replication stream and the publisher."""

    def __init__(self) -> None:
        self._queue: deque[Item | Mark] = deque()
        self._waiting = 0  # items in the queue
        self._in_flight: Batch | None = None
        self.confirmed_lsn = 0
        self.confirmed_commit_lsn = 0
        self.ready = Signal()  # items are waiting
        self.progressed = Signal()  # confirmed_lsn moved

    @property
    def backlog(self) -> int:
        """Items not yet delivered: waiting plus in flight."""
        return self._waiting + (len(self._in_flight.items) if self._in_flight else 0)

    @property
    def idle(self) -> bool:
        return not self._queue and self._in_flight is None

    def add(self, item: Item) -> None:
        self._queue.append(item)
        self._waiting += 1
        if self._waiting == 1:  # set while anything waits (take clears it): once, not per item
            self.ready.set()

    def add_mark(self, lsn: int, *, commit: bool) -> None:
        if self.idle:
            self._confirm(Mark(lsn, commit))
            return
        last = self._queue[-1] if self._queue else None
        if isinstance(last, Mark):  # consecutive marks: keep one, the furthest
            self._queue[-1] = Mark(max(lsn, last.lsn), commit or last.commit)
        else:
            self._queue.append(Mark(lsn, commit))

    def take(self, limit: int) -> Batch | None:
        """Up to ``limit`` items from the front, with the marks between them."""
        if self._in_flight is not None:
            raise RuntimeError("the previous batch is still in flight")
        self._confirm_leading_marks()
        batch = Batch()
        queue = self._queue
        while queue and (len(batch.items) < limit or isinstance(queue[0], Mark)):
            entry = queue.popleft()
            if isinstance(entry, Mark):
                batch.marks.append((len(batch.items), entry))
            else:
                batch.items.append(entry)
        self._waiting -= len(batch.items)
        if not self._waiting:
            self.ready.clear()
        if not batch.items:
            return None
        self._in_flight = batch
        return batch

    def acknowledge(self, batch: Batch, delivered: int) -> None:
        """The first ``delivered`` items of ``batch`` are delivered or parked."""
        if batch is not self._in_flight:
            raise RuntimeError("acknowledging a batch that is not in flight")
        for before, mark in batch.marks:
            if before <= delivered:
                self._confirm(mark)
        if delivered >= len(batch.items):
            self._in_flight = None
            self._confirm_leading_marks()

    def _confirm_leading_marks(self) -> None:
        while self._queue and isinstance(self._queue[0], Mark):
            mark = self._queue.popleft()
            assert isinstance(mark, Mark)
            self._confirm(mark)

    def _confirm(self, mark: Mark) -> None:
        if mark.lsn > self.confirmed_lsn:
            self.confirmed_lsn = mark.lsn
            self.progressed.set()
        if mark.commit and mark.lsn > self.confirmed_commit_lsn:
            self.confirmed_commit_lsn = mark.lsn
