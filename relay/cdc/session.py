"""One streaming session: read the slot, publish in batches, confirm what was delivered.

Three tasks share an ``Outgoing`` queue:

- the reader decodes frames into events and marks, and stops reading (but not answering
  the server) while too much waits for the broker;
- the publisher takes batches of up to ``batch_size`` events (after a short linger when
  none arrived during the last publish but one came soon after it, so small
  transactions share a batch) and delivers them in order;
- the progress task saves the confirmed position to ``cdc_state`` and only then reports
  it to the server, at least every ``STATUS_INTERVAL`` and whenever the server asks.

Positions only move on commit marks of fully delivered transactions, or on a keepalive's
WAL end when nothing is waiting. An idle advance (other tables' writes) is saved at once
when it is large (``IDLE_SAVE_BYTES``), otherwise every ``IDLE_SAVE_INTERVAL``: each save
is itself a little WAL, so an idle relay writes one small row every ten seconds, not
continuously.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from relay.cdc.changes import ChangeDecoder
from relay.cdc.frames import PrimaryKeepalive, lsn_to_str, parse_copy_data, wal_data_payload
from relay.cdc.leader import Leadership
from relay.cdc.outgoing import Batch, Outgoing
from relay.cdc.publisher import BatchPublisher
from relay.cdc.queries import cdc_query
from relay.cdc.stream import ReplicationStream
from relay.errors import LeaseLostError
from relay.tasks import Signal, wait_any

log = logging.getLogger(__name__)

STATUS_INTERVAL = 10.0  # well inside the default wal_sender_timeout (60 s)
# At most this often a cdc_state write while events flow. Each save is a write, a round
# trip, and WAL the walsender must decode: at a trickle of one transaction per message,
# five saves a second were a measurable share of the relay's CPU (benchmarks/README.md).
# A crash re-sends what was delivered since the last save (the inbox drops it): at most
# a second's worth, where Kafka Connect flushes source offsets once a minute.
SAVE_INTERVAL = 1.0
IDLE_SAVE_BYTES = 1 << 20  # an idle advance this large is saved at once
IDLE_SAVE_INTERVAL = 10.0  # a smaller one waits this long
# Stop reading while this many batches wait for the broker (at least MIN_BACKLOG events):
# enough to have the next batch ready, and every waiting event costs memory.
BACKLOG_BATCHES = 3
MIN_BACKLOG = 4096
YIELD_EVERY = 256  # frames read in a row before the reader lets the other tasks run
# Frames taken from the connection at once; the backlog may pass its bound by this many.
READ_BATCH = 128
# A batch's first event lingers only when it came within this many lingers of the last
# publish's end, as polling's lanes do (relay.poll.rounds): transactions that come that
# close together may share a batch, while a lone one after a longer quiet (a service's
# trickle, one transaction at a time) has nobody right behind it, and the linger's timer
# and turn of the event loop would cost about as much as the rest of its journey.
LONE_EVENT_AFTER = 2


class SessionLoops:
    """The reading and progress loops of a streaming session, of one outbox's slot or of
    one shared by several. Reading: frames in batches, paused while the broker is behind.
    Progress: save, then tell the server, at most every ``SAVE_INTERVAL`` while events
    flow, at least every ``STATUS_INTERVAL``, and at once when the server asks. A session
    sets ``_stream`` and the signals, and says how a frame is taken, which queue is too
    full to read on (``_no_space``) and what saving is (``_save_and_report``)."""

    _stream: ReplicationStream
    _reply_wanted: Signal
    _closing: Signal
    _last_save: float
    _last_status: float
    _reported: tuple[int, int]

    async def _save_and_report(self, *, reply: bool = False, final: bool = False) -> None:
        raise NotImplementedError

    def _take(self, frame: memoryview) -> None:
        raise NotImplementedError

    async def _progress_loop(self) -> None:
        raise NotImplementedError

    async def _run_loops(
        self,
        stopping: asyncio.Event,
        lost: asyncio.Event,
        publishing: Callable[[Signal], dict[str, Coroutine[Any, Any, None]]],
    ) -> None:
        """Read, publish and confirm until ``stopping``, ``lost`` or a failure; then
        finish the batches in flight (a publish call is never cut off halfway) and, unless
        the lead was lost, save and report where they left the stream."""
        halt = Signal()  # stop taking batches: stopping, or the lead is lost
        reader = asyncio.create_task(self._read_loop(), name="cdc-reader")
        publishers = [asyncio.create_task(work, name=name)
                      for name, work in publishing(halt).items()]
        progress = asyncio.create_task(self._progress_loop(), name="cdc-progress")
        tasks = {reader, progress, *publishers}
        ended = asyncio.ensure_future(wait_any(stopping, lost))
        try:
            done, _ = await asyncio.wait(tasks | {ended}, return_when=asyncio.FIRST_COMPLETED)
            for task in done & tasks:
                task.result()  # a failure: raise it (the finally cancels the rest)
            halt.set()
            reader.cancel()
            await asyncio.gather(*publishers)  # each finishes the batch in flight
            self._closing.set()
            await progress  # between statements: the leader connection stays usable
            if lost.is_set():
                raise LeaseLostError("another relay took over the slot")
            await self._save_and_report(final=True)
        finally:
            for task in (*tasks, ended):
                task.cancel()
            await asyncio.gather(*tasks, ended, return_exceptions=True)

    def _no_space(self) -> Signal | None:
        """The signal of a queue too full to read more for, if one is."""
        raise NotImplementedError

    async def _read_loop(self) -> None:
        self._stream.hand_over_while_waiting(
            self._take, lambda: self._no_space() is None, READ_BATCH
        )
        since_yield = 0
        while True:
            if (space := self._no_space()) is not None:
                space.clear()
                await wait_any(space, timeout=STATUS_INTERVAL)
                continue
            # Frames in batches: one await per batch, not per change.
            frames = await self._stream.read_frames(STATUS_INTERVAL, READ_BATCH)
            for frame in frames:
                self._take(frame)
            since_yield += len(frames)
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)  # a busy stream never waits: let the others run

    async def _progress_loop_on(self, progressed: Signal) -> None:
        while not self._closing.is_set():
            progressed.clear()
            reply = self._reply_wanted.is_set()
            self._reply_wanted.clear()
            await self._save_and_report(reply=reply)
            await wait_any(progressed, self._reply_wanted, self._closing,
                               timeout=min(STATUS_INTERVAL, IDLE_SAVE_INTERVAL))
            since_save = time.monotonic() - self._last_save
            if since_save < SAVE_INTERVAL and not self._reply_wanted.is_set():
                await wait_any(self._closing, timeout=SAVE_INTERVAL - since_save)

    async def _report(self, received: int, flushed: int, *, reply: bool, final: bool) -> None:
        """Tell the server what was received and what may be forgotten, when it moved,
        when it is due, or when asked."""
        position = (max(received, flushed), flushed)
        due = time.monotonic() - self._last_status >= STATUS_INTERVAL
        if position != self._reported or due or reply or final:
            await self._stream.send_status(*position)
            self._reported = position
            self._last_status = time.monotonic()
            log.debug("confirmed %s to the server", lsn_to_str(flushed))


def save_target(outgoing: Outgoing, saved_lsn: int, last_save: float) -> int:
    """How far to save now: a delivered commit at once; an idle advance (other tables'
    writes, keepalives) when it is large or has waited long enough."""
    if outgoing.confirmed_commit_lsn > saved_lsn:
        return outgoing.confirmed_lsn
    advance = outgoing.confirmed_lsn - saved_lsn
    waited = time.monotonic() - last_save
    if advance >= IDLE_SAVE_BYTES or (advance > 0 and waited >= IDLE_SAVE_INTERVAL):
        return outgoing.confirmed_lsn
    return saved_lsn


class StreamSession(SessionLoops):
    def __init__(
        self,
        stream: ReplicationStream,
        decoder: ChangeDecoder,
        outgoing: Outgoing,
        publisher: BatchPublisher,
        leadership: Leadership,
        *,
        schema: str,
        start_lsn: int,
        batch_size: int,
        linger: float,
    ) -> None:
        self._stream = stream
        self._decoder = decoder
        self._outgoing = outgoing
        self._publisher = publisher
        self._leadership = leadership
        self._save_query = cdc_query("save_progress", schema)
        self._batch_size = batch_size
        self._linger = linger
        self._max_backlog = max(batch_size * BACKLOG_BATCHES, MIN_BACKLOG)
        self.received_lsn = start_lsn
        self.saved_lsn = start_lsn
        self._reported = (-1, -1)
        self._last_status = self._last_save = 0.0
        self._reply_wanted = Signal()
        self._space = Signal()
        self._closing = Signal()

    async def run(self, stopping: asyncio.Event) -> None:
        """Stream until ``stopping`` (then drain the batch in flight) or a failure.

        Losing the lead also ends the session: the batch in flight is finished (a publish
        call is never cut off halfway), nothing more is published or confirmed.
        """
        await self._run_loops(stopping, self._leadership.lost,
                              lambda halt: {"cdc-publisher": self._publish_loop(halt)})

    # --- reading ---------------------------------------------------------------------

    def _no_space(self) -> Signal | None:
        return self._space if self._outgoing.backlog >= self._max_backlog else None

    def _take(self, frame: memoryview) -> None:
        wal_data = wal_data_payload(frame)
        if wal_data is not None:
            wal_end, payload = wal_data
            if wal_end > self.received_lsn:
                self.received_lsn = wal_end
            self._decoder.feed(payload)
            return
        parsed = parse_copy_data(frame)
        if isinstance(parsed, PrimaryKeepalive):
            self.received_lsn = max(self.received_lsn, parsed.wal_end)
            self._outgoing.add_mark(parsed.wal_end, commit=False)
            if parsed.reply_requested:
                self._reply_wanted.set()
            return
        self.received_lsn = max(self.received_lsn, parsed.wal_end)
        self._decoder.feed(parsed.payload)

    # --- publishing ------------------------------------------------------------------

    async def _publish_loop(self, halt: Signal) -> None:
        await publish_batches(self._outgoing, self._publisher, halt, self._space,
                              batch_size=self._batch_size, linger=self._linger)

    # --- confirming ------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        await self._progress_loop_on(self._outgoing.progressed)

    async def _save_and_report(self, *, reply: bool = False, final: bool = False) -> None:
        outgoing = self._outgoing
        target = save_target(outgoing, self.saved_lsn, self._last_save)
        target = max(target, outgoing.confirmed_lsn if final else 0)
        if target > self.saved_lsn:
            await self._leadership.guarded(self._save_query, {"lsn": lsn_to_str(target)})
            self.saved_lsn = target
            self._last_save = time.monotonic()
        await self._report(self.received_lsn, self.saved_lsn, reply=reply, final=final)



async def publish_batches(
    outgoing: Outgoing, publisher: BatchPublisher, halt: Signal, space: Signal,
    *, batch_size: int, linger: float,
) -> None:
    """Deliver ``outgoing``'s batches in order until ``halt`` (or a batch cut short);
    ``space`` is set after each, for a reader waiting for the backlog to shrink."""
    idle_since = time.monotonic()
    while True:
        batch = await _next_batch(outgoing, halt, batch_size, linger, idle_since)
        if batch is None:
            return
        acknowledge = functools.partial(outgoing.acknowledge, batch)
        delivered = await publisher.deliver(batch.items, halt, acknowledge)
        idle_since = time.monotonic()
        space.set()
        if not delivered:
            return


async def _next_batch(
    outgoing: Outgoing, halt: Signal, batch_size: int, linger: float, idle_since: float
) -> Batch | None:
    # Events that came while the previous batch was with the broker have waited
    # long enough: only a batch whose first event finds the queue empty lingers, and
    # only when it came soon after that publish (LONE_EVENT_AFTER).
    if outgoing.ready.is_set():
        linger = 0.0
    while not outgoing.ready.is_set() and not halt.is_set():
        await wait_any(halt, outgoing.ready)
    if time.monotonic() - idle_since > LONE_EVENT_AFTER * linger:
        linger = 0.0
    if outgoing.backlog < batch_size and linger > 0 and not halt.is_set():
        await wait_any(halt, timeout=linger)  # let the transactions behind join
    return None if halt.is_set() else outgoing.take(batch_size)
