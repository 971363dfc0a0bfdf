"""The replication connection: create a slot, stream it, answer with status updates.

psycopg runs the replication commands that return rows (``CREATE_REPLICATION_SLOT``);
``START_REPLICATION`` switches the connection to COPY BOTH, which is read and written
through libpq directly (``conn.pgconn``), waiting on the socket with the event loop.
The session pins the settings the text format of decoded values depends on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from relay.cdc.frames import encode_standby_status, lsn_to_str, str_to_lsn
from relay.dsn import describe_dsn
from relay.errors import (
    DatabaseUnavailableError,
    PermanentError,
    RelayError,
    RetryableError,
    is_retryable_sqlstate,
    translate_db_error,
)

log = logging.getLogger(__name__)

SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c bytea_output=hex"
OBJECT_IN_USE = "55006"  # the slot is active for another walsender
UNDEFINED_OBJECT = "42704"  # the slot does not exist
READ_WAIT = 0.5  # bound on one wait for the socket, so buffered data is never missed


class SlotInUseError(RetryableError):
    """Another walsender streams the slot (a previous leader not yet gone)."""


class SlotMissingError(RetryableError):
    """The slot disappeared between the check and START_REPLICATION."""


def replication_conninfo(dsn: str) -> str:
    """``dsn`` with the replication session's settings appended to its own options."""
    params = conninfo_to_dict(dsn)
    options = str(params.get("options") or "")
    return make_conninfo(
        dsn,
        replication="database",
        options=f"{options} {SESSION_OPTIONS}".strip(),
        client_encoding="UTF8",
        application_name="outbox-relay/cdc-stream",
    )


class ReplicationStream:
    """One replication connection; create with :meth:`connect`, end with :meth:`close`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self.streaming = False
        self._failure: RelayError | None = None  # raised once the frames before it are read
        # The streaming socket stays registered with the event loop between the reader's
        # waits (see _wait_readable); ``_reader`` is the wait in progress, if any.
        self._watching: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._reader: asyncio.Future[bool] | None = None
        # What the readiness callback took from libpq to see that a frame had come (a
        # CopyData result, or the error reading raised): the reader's first, next time.
        self._early: tuple[int, memoryview] | Exception | None = None
        # Where frames go while the reader waits (see hand_over_while_waiting).
        self._handover: _Handover | None = None

    @classmethod
    async def connect(cls, dsn: str, *, connect_timeout: float) -> ReplicationStream:
        try:
            conn = await psycopg.AsyncConnection.connect(
                replication_conninfo(dsn), autocommit=True,
                connect_timeout=max(1, round(connect_timeout)),
            )
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"cannot open a replication connection to {describe_dsn(dsn)}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
            ) from None
        return cls(conn)

    @property
    def backend_pid(self) -> int:
        return self._pgconn.backend_pid

    async def create_slot(self, slot: str) -> tuple[int, str]:
        """Create logical slot ``slot`` (pgoutput) and export its snapshot; return the
        consistent point and the snapshot name, valid until the next command here."""
        statement = sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT")
        try:
            cursor = await self._conn.execute(statement.format(sql.Identifier(slot)))
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise translate_db_error(exc, f"creating replication slot {slot}") from None
        if row is None:
            raise PermanentError(f"creating replication slot {slot} returned nothing")
        return str_to_lsn(str(row[1])), str(row[2])

    async def start(self, slot: str, publication: str, start_lsn: int = 0) -> None:
        """``START_REPLICATION`` from ``start_lsn`` (0: the slot's confirmed position)."""
        options = sql.SQL(
            "proto_version '1', publication_names {}, binary 'true', messages 'true'"
        ).format(sql.Literal(publication))
        command = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(slot), sql.SQL(lsn_to_str(start_lsn)), options
        )
        pgconn = self._pgconn
        try:
            pgconn.send_query(command.as_bytes(self._conn))
            await self._flush()
            while True:
                pgconn.consume_input()
                if not pgconn.is_busy():
                    break
                await self._wait(readable=True, timeout=READ_WAIT)
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(f"starting replication of {slot}: {exc}") from None
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            while pgconn.get_result() is not None:
                pass  # libpq wants every result read before the next command
            raise _start_failure(slot, result, pgconn)
        self.streaming = True

    async def read_frames(self, timeout: float, limit: int) -> list[memoryview]:
        """The CopyData frames that have arrived, up to ``limit`` of them; when none has,
        the first to come within ``timeout`` (an empty list when none does).

        When the stream ends or breaks, the frames read before are handed over first
        (an error in one of them says more than the end does) and the next call raises."""
        if self._failure is not None:
            raise self._failure
        pgconn = self._pgconn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        frames: list[memoryview] = []
        try:
            while True:
                self._take_arrived(frames, limit)
                remaining = deadline - loop.time()
                if frames or remaining <= 0:
                    return frames
                if not await self._wait_readable(min(remaining, READ_WAIT)):
                    pgconn.consume_input()  # the timeout: whatever came meanwhile
        except psycopg.Error as exc:
            self._failure = self._failed_with(exc)
        except RelayError as exc:  # the server ended the stream
            self._failure = exc
        if not frames:
            raise self._failure from None
        return frames

    def _take_arrived(self, frames: list[memoryview], limit: int) -> None:
        pgconn = self._pgconn
        early = self._take_early()
        while len(frames) < limit:
            if early is None:
                size, data = pgconn.get_copy_data(1)
            else:  # what the readiness callback took: first, once
                (size, data), early = early, None
            if size == 0:
                # A busy stream has more in the socket than libpq read last time
                # (it reads ~32 KB at most): a read that finds nothing costs less
                # than a wait on the socket through the event loop.
                pgconn.consume_input()
                size, data = pgconn.get_copy_data(1)
            if size > 0:
                frames.append(data)
            elif size == -1:
                raise self._stream_ended()
            else:
                return

    def _take_early(self) -> tuple[int, memoryview] | None:
        early, self._early = self._early, None
        if isinstance(early, Exception):
            raise early
        return early

    def hand_over_while_waiting(
        self, handler: Callable[[memoryview], None], room: Callable[[], bool], limit: int
    ) -> None:
        """While the reader waits in ``read_frames``, give the frames that arrive to
        ``handler`` from the event loop's readiness callback, at most ``limit`` at a
        time and while ``room()`` says there is room, instead of waking the reader.

        At one transaction per message the reader would otherwise wake for each (a task
        step and a turn of the event loop) only to hand the frames to the same handler.
        The reader wakes when the handler raises (``read_frames`` raises it), when there
        is no room or more than ``limit`` frames wait, and when the stream ends or
        breaks; so frames are handled in order, once, by one of the two."""
        self._handover = _Handover(handler, room, limit)

    async def send_status(self, written: int, flushed: int, *, reply: bool = False) -> None:
        """Tell the server what was received (``written``) and may be forgotten."""
        try:
            self._pgconn.put_copy_data(encode_standby_status(written, flushed, flushed,
                                                             reply=reply))
            await self._flush()
        except psycopg.Error as exc:
            raise self._failed_with(exc) from None

    async def close(self) -> None:
        """Drop the connection without ending the stream politely: whatever was not
        confirmed is sent again next time, which is the point."""
        self.streaming = False
        self._stop_watching()  # before the socket closes: its number may be reused
        if not self._conn.closed:
            with contextlib.suppress(psycopg.Error):  # it may have failed already
                await self._conn.close()

    def _failed_with(self, exc: psycopg.Error) -> RelayError:
        """The server's own error when it ended the stream with one (its SQLSTATE says
        what it is), else a broken connection."""
        # libpq may have closed the socket: the event loop must not keep its number,
        # which the next connection opened may get.
        self._stop_watching()
        if self._failure is not None:
            # The reader took the server's error first (its frames before it are still
            # being handed over): a status update sent after that fails for the same end.
            return self._failure
        pgconn = self._pgconn
        with contextlib.suppress(psycopg.Error):
            pgconn.consume_input()  # the error message may still be in the socket
        with contextlib.suppress(psycopg.Error):
            while pgconn.get_copy_data(1)[0] > 0:
                pass  # frames before the error: the stream is over, they go again
        # Read the result even when that raised: once libpq has taken the server's error
        # (a status update sent after it is what failed), the COPY is over and
        # get_copy_data raises "no COPY in progress", but the error's result still waits.
        with contextlib.suppress(psycopg.Error):
            result = pgconn.get_result()
            if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                return _result_error("the replication stream", result)
        return DatabaseUnavailableError(f"the replication stream broke: {exc}")

    def _stream_ended(self) -> RelayError:
        result = self._pgconn.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            return _result_error("the replication stream", result)
        return DatabaseUnavailableError("the server ended the replication stream")

    async def _flush(self) -> None:
        while self._pgconn.flush() == 1:
            await self._wait(readable=False, timeout=READ_WAIT)

    async def _wait(self, *, readable: bool, timeout: float) -> None:
        """Until the socket is ready or ``timeout`` passes. The future is awaited
        directly, with a timer of its own: ``asyncio.wait`` would add a future, a
        callback and a turn of the event loop to every wait, and at one transaction per
        message the stream waits once or twice for each."""
        loop = asyncio.get_running_loop()
        fd = self._pgconn.socket
        if readable:
            self._stop_watching()  # one reader of the socket at a time
        ready: asyncio.Future[None] = loop.create_future()
        (loop.add_reader if readable else loop.add_writer)(fd, _resolve, ready)
        timer = loop.call_later(timeout, _resolve, ready)
        try:
            await ready  # cancelling the caller cancels the future and ends the wait
        finally:
            timer.cancel()
            (loop.remove_reader if readable else loop.remove_writer)(fd)

    async def _wait_readable(self, timeout: float) -> bool:
        """``_wait(readable=True)`` for the stream's reader, with the socket left
        registered after the wait: at one transaction per message the reader waits once
        or twice for each, and registering and removing the socket each time (two
        ``epoll_ctl`` calls and the event loop's bookkeeping) costs more than the wait's
        own turn of the loop. True when a frame came (libpq has read the socket), False
        when ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        self._reader = ready
        if self._watching is None:
            fd = self._pgconn.socket
            loop.add_reader(fd, self._on_readable)
            self._watching = (loop, fd)
        timer = loop.call_later(timeout, _resolve_with, ready, False)
        try:
            return await ready  # cancelling the caller cancels the future, ends the wait
        finally:
            timer.cancel()
            self._reader = None

    def _on_readable(self) -> None:
        reader = self._reader
        if reader is None:
            # Nobody reads now (frames are being handled, or the reader pauses for the
            # broker): stop watching, or the loop would call this on every turn while
            # the data waits in the socket. The next wait registers the socket again.
            self._stop_watching()
        elif reader.done():
            pass
        elif self._handover is None:
            if self._frame_came():
                reader.set_result(True)
        elif self._handed_over(self._handover):
            reader.set_result(True)

    def _handed_over(self, handover: _Handover) -> bool:
        """Read the socket and hand what came to the handler; whether the reader must
        wake (see hand_over_while_waiting)."""
        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            for _ in range(handover.limit):
                if not handover.room():
                    return True
                result = pgconn.get_copy_data(1)
                if result[0] <= 0:
                    if result[0] == 0:
                        return False  # all handled: the socket says when more comes
                    self._early = result  # the end: the reader's next read says how
                    return True
                handover.handler(result[1])
        except Exception as exc:  # psycopg's reading, or the handler's: the reader's
            self._early = exc
        return True

    def _frame_came(self) -> bool:
        """Read the socket; whether a whole frame (or the end, or an error) is there.

        The event loop may call back for readiness it saw before the reader's last read:
        the reader's task and this callback were queued in the same turn, the task first,
        and it took the data and began a new wait. Waking it for nothing costs a turn of
        the loop, a task step and a new wait; a read that finds nothing costs a syscall."""
        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            result = pgconn.get_copy_data(1)
        except psycopg.Error as exc:
            self._early = exc
            return True
        if result[0] == 0:
            return False
        self._early = result
        return True

    def _stop_watching(self) -> None:
        if self._watching is not None:
            (loop, fd), self._watching = self._watching, None
            if not loop.is_closed():
                loop.remove_reader(fd)


@dataclass(frozen=True, slots=True)
class _Handover:
    handler: Callable[[memoryview], None]
    room: Callable[[], bool]
    limit: int


def _resolve(future: asyncio.Future[None]) -> None:
    _resolve_with(future, None)


def _resolve_with(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _start_failure(slot: str, result: pq.abc.PGresult | None, pgconn: pq.abc.PGconn) -> RelayError:
    if result is None:
        return DatabaseUnavailableError(
            f"starting replication of {slot}: {pgconn.error_message.decode(errors='replace')}"
        )
    return _result_error(f"starting replication of slot {slot}", result)


def _result_error(doing: str, result: pq.abc.PGresult) -> RelayError:
    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or None
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or result.error_message
    message = f"{doing}: {primary.decode(errors='replace').strip()}"
    if sqlstate == OBJECT_IN_USE:
        return SlotInUseError(message)
    if sqlstate == UNDEFINED_OBJECT:
        return SlotMissingError(message)
    return RetryableError(message) if is_retryable_sqlstate(sqlstate) else PermanentError(message)
