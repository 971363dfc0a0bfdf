"""One streaming session of a slot several outboxes share (relay.cdc.group).

The reader takes the one replication stream apart by outbox: a Relation message goes to
the outbox whose table it describes, an Insert to the outbox of its relation, a logical
message to the outbox of its prefix. A transaction's Begin reaches an outbox with its
first change there and its Commit only if it had one, so an outbox's queue holds its
own transactions in commit order, and nothing else. Each outbox then publishes from its
own queue (``publish_batches``, as a slot of its own would) and saves its own position
in its own ``cdc_state``.

What the server hears is the position every outbox has saved: the slot never moves past
an event some outbox has not delivered. An outbox without anything waiting follows the
stream (the last commit read, or a keepalive's WAL end), so an idle tenant does not hold
the slot back; its position is saved like any idle advance (relay.cdc.session).

A transaction an outbox has published already (its saved position is past the
transaction's commit) is skipped for that outbox: the stream starts where the outbox
furthest behind left off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from struct import Struct
from typing import Any, Final

from relay.cdc.changes import ChangeDecoder
from relay.cdc.frames import PrimaryKeepalive, lsn_to_str, parse_copy_data, wal_data_payload
from relay.cdc.leader import Leadership
from relay.cdc.outgoing import Outgoing
from relay.cdc.pgoutput import Begin, Commit, Message, Relation, parse_pgoutput
from relay.cdc.publisher import BatchPublisher
from relay.cdc.queries import cdc_query
from relay.cdc.session import (
    BACKLOG_BATCHES,
    IDLE_SAVE_BYTES,
    MIN_BACKLOG,
    SessionLoops,
    publish_batches,
    save_target,
)
from relay.cdc.settings import CdcNames
from relay.cdc.stream import ReplicationStream
from relay.tasks import Signal

log = logging.getLogger(__name__)

_UINT32: Final = Struct("!I").unpack_from
_BEGIN, _COMMIT, _INSERT, _RELATION, _MESSAGE = (ord(tag) for tag in "BCIRM")
_LSN_MARKER = "FFFFFFFF/FFFFFFFE"  # a position no save is of, to be replaced


@dataclass(eq=False)
class Lane:
    """One outbox in the session: its decoder, its queue and how far it has saved."""

    names: CdcNames
    decoder: ChangeDecoder
    outgoing: Outgoing
    publisher: BatchPublisher
    start_lsn: int
    saved_lsn: int = 0
    last_save: float = 0.0
    space: Signal = field(default_factory=Signal)

    def __post_init__(self) -> None:
        self.saved_lsn = self.start_lsn
        self.save_query = cdc_query("save_progress", self.names.schema)
        self._save_parts: list[str] | None = None  # its text around the position

    async def save_text(self, leadership: Leadership, lsn: int) -> str:
        """The statement saving ``lsn``, bound: only the position changes from one save
        to the next, so it is rendered once and the position put in its places (binding
        a statement per busy outbox several times a second was most of a save's CPU)."""
        if self._save_parts is None:
            marked = await leadership.render(self.save_query, {"lsn": _LSN_MARKER})
            self._save_parts = marked.split(f"'{_LSN_MARKER}'")
            assert len(self._save_parts) > 1, "the position's literal was not found"
        # A pg_lsn's text is hex digits and a slash: a literal needs no escaping.
        return f"'{lsn_to_str(lsn)}'".join(self._save_parts)

    def save_target(self, *, final: bool) -> int:
        if final:
            return max(self.outgoing.confirmed_lsn, self.saved_lsn)
        return save_target(self.outgoing, self.saved_lsn, self.last_save)


class GroupSession(SessionLoops):
    def __init__(
        self,
        stream: ReplicationStream,
        lanes: Sequence[Lane],
        leadership: Leadership,
        *,
        batch_size: int,
        linger: float,
    ) -> None:
        self._stream = stream
        self._lanes = list(lanes)
        self._by_schema = {lane.names.table.schema: lane for lane in lanes}
        self._by_prefix = {lane.names.message_prefix: lane for lane in lanes}
        self._relations: dict[int, Lane] = {}
        self._leadership = leadership
        self._batch_size = batch_size
        self._linger = linger
        self._max_backlog = max(batch_size * BACKLOG_BATCHES, MIN_BACKLOG)
        self._begin: Begin | None = None
        self._touched: list[Lane] = []
        # The outboxes that may have events waiting: given events since a keepalive last
        # found them idle. Keepalives come after nearly every transaction under traffic,
        # so they look at these, not at every outbox of the slot.
        self._active: dict[int, Lane] = {}
        self.received_lsn = self.boundary_lsn = min(lane.start_lsn for lane in lanes)
        self._followed_lsn = self.boundary_lsn  # the boundary idle outboxes last followed
        self._reported = (-1, -1)
        self._last_status = self._last_save = 0.0
        self._progressed = Signal()  # any lane's confirmed position moved
        for lane in lanes:
            lane.outgoing.progressed = self._progressed
        self._reply_wanted = Signal()
        self._closing = Signal()

    @property
    def flushed_lsn(self) -> int:
        return min(lane.saved_lsn for lane in self._lanes)

    async def run(self, stopping: asyncio.Event) -> None:
        """Stream until ``stopping`` (then drain the batches in flight) or a failure."""
        await self._run_loops(stopping, self._leadership.lost, self._publishers)

    def _publishers(self, halt: Signal) -> dict[str, Coroutine[Any, Any, None]]:
        return {
            f"cdc-publisher {lane.names.schema}": publish_batches(
                lane.outgoing, lane.publisher, halt, lane.space,
                batch_size=self._batch_size, linger=self._linger,
            )
            for lane in self._lanes
        }

    # --- reading ---------------------------------------------------------------------

    def _no_space(self) -> Signal | None:
        """One outbox far behind its broker stops the reading for all: the stream has
        one order, and every waiting event costs memory."""
        # Only an outbox given events since a keepalive found it idle, or in the
        # transaction being read, can have any waiting: not every outbox of the slot is
        # looked at for each batch of frames.
        for lane in (*self._active.values(), *self._touched):
            if lane.outgoing.backlog >= self._max_backlog:
                return lane.space
        return None

    def _take(self, frame: memoryview) -> None:
        wal_data = wal_data_payload(frame)
        if wal_data is not None:
            wal_end, payload = wal_data
            self.received_lsn = max(self.received_lsn, wal_end)
            self._route(payload if isinstance(payload, bytes) else bytes(payload))
            return
        parsed = parse_copy_data(frame)
        if isinstance(parsed, PrimaryKeepalive):
            self._keepalive(parsed)
            return
        self.received_lsn = max(self.received_lsn, parsed.wal_end)
        self._route(bytes(parsed.payload))

    def _keepalive(self, keepalive: PrimaryKeepalive) -> None:
        """A busy outbox queues the keepalive's WAL end behind its events, as a slot of its
        own would. An idle one follows it when positions are saved (``_save_and_report``):
        the server sends a keepalive after nearly every transaction under traffic, and
        marking each of hundreds of idle outboxes for each was most of the stream's CPU."""
        self.received_lsn = max(self.received_lsn, keepalive.wal_end)
        for key, lane in list(self._active.items()):
            if lane.outgoing.idle:
                del self._active[key]
            else:
                lane.outgoing.add_mark(keepalive.wal_end, commit=False)
        if self._begin is None:
            self.boundary_lsn = max(self.boundary_lsn, keepalive.wal_end)
            if self.boundary_lsn - self._followed_lsn >= IDLE_SAVE_BYTES:
                self._progressed.set()  # a large advance is saved at once
        if keepalive.reply_requested:
            self._reply_wanted.set()

    def _route(self, data: bytes) -> None:
        """Hand one pgoutput message to the outbox it belongs to, if any."""
        tag = data[0] if data else 0
        if tag == _INSERT and len(data) > 5:
            lane = self._relations.get(_UINT32(data, 1)[0])
            if lane is not None and self._opened(lane):
                lane.decoder.feed(data)
        elif tag == _BEGIN:
            begin = parse_pgoutput(data)
            assert isinstance(begin, Begin)
            self._begin, self._touched = begin, []
        elif tag == _COMMIT:
            self._commit(parse_pgoutput(data))
        elif tag == _RELATION:
            self._relation(parse_pgoutput(data))
        elif tag == _MESSAGE:
            self._message(parse_pgoutput(data))
        # Types, origins, updates, deletes and truncates concern no outbox.

    def _opened(self, lane: Lane) -> bool:
        """Has ``lane`` seen the Begin of the transaction being read? It gets it now,
        unless it published that transaction before this session."""
        if lane in self._touched:
            return True
        begin = self._begin
        if begin is None or begin.final_lsn < lane.start_lsn:
            return False
        lane.decoder.apply(begin)
        self._touched.append(lane)
        return True

    def _commit(self, commit: object) -> None:
        assert isinstance(commit, Commit)
        for lane in self._touched:
            lane.decoder.apply(commit)
            self._active[id(lane)] = lane
        self._begin, self._touched = None, []
        self.boundary_lsn = max(self.boundary_lsn, commit.end_lsn)

    def _relation(self, relation: object) -> None:
        assert isinstance(relation, Relation)
        lane = self._by_schema.get(relation.namespace)
        table = lane.names.table if lane is not None else None
        if lane is None or table is None or relation.name != table.name:
            self._relations.pop(relation.relation_id, None)
            return
        lane.decoder.apply(relation)
        self._relations[relation.relation_id] = lane

    def _message(self, message: object) -> None:
        assert isinstance(message, Message)
        lane = self._by_prefix.get(message.prefix)
        if lane is None:
            return
        if message.transactional:
            if self._opened(lane):
                lane.decoder.apply(message)
        elif message.lsn >= lane.start_lsn:
            lane.decoder.apply(message)
            self._active[id(lane)] = lane

    # --- confirming ------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        await self._progress_loop_on(self._progressed)

    async def _save_and_report(self, *, reply: bool = False, final: bool = False) -> None:
        self._last_save = time.monotonic()
        if self._begin is None:
            self._followed_lsn = self.boundary_lsn
        due = []
        for lane in self._lanes:
            if lane.outgoing.idle and self._begin is None:
                # Nothing of this outbox waits, and the reader is between transactions:
                # everything up to the last commit or keepalive read is its past too.
                lane.outgoing.add_mark(self.boundary_lsn, commit=False)
            target = lane.save_target(final=final)
            if target > lane.saved_lsn:
                due.append((lane, target))
        await self._save(due)
        await self._report(self.received_lsn, self.flushed_lsn, reply=reply, final=final)

    async def _save(self, due: list[tuple[Lane, int]]) -> None:
        """Save each lane's position: in one query when several are due (idle outboxes
        come due together, every IDLE_SAVE_INTERVAL), one by one when that query failed
        on a connection still fit (an outbox dropped: its statement is let go alone)."""
        leadership = self._leadership
        if len(due) > 1 and await leadership.guarded_texts(
            [await lane.save_text(leadership, target) for lane, target in due]
        ):
            saved_at = time.monotonic()
            for lane, target in due:
                lane.saved_lsn, lane.last_save = target, saved_at
            return
        for lane, target in due:
            await leadership.guarded(lane.save_query, {"lsn": lsn_to_str(target)},
                                     schema=lane.names.schema)
            lane.saved_lsn, lane.last_save = target, time.monotonic()
