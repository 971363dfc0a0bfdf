"""ReplicationStream.read_frames: every frame libpq holds, in order, in bounded batches."""

import asyncio
import contextlib
import socket
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import pq

from relay.cdc.stream import ReplicationStream, SlotMissingError
from relay.errors import DatabaseUnavailableError, PermanentError
from tests.support.counted import Counted

END = None  # where the server ended the COPY


class ArrivingFrames:
    """Stands in for libpq's connection: each consume_input() makes the next chunk of
    frames readable, as reads from the socket would."""

    def __init__(self, chunks):
        self._chunks = list(chunks)
        self._buffered = []
        self.socket = -1

    def consume_input(self):
        if self._chunks:
            self._buffered.extend(self._chunks.pop(0))

    def get_copy_data(self, _async):
        if not self._buffered:
            return 0, b""
        frame = self._buffered.pop(0)
        return (-1, b"") if frame is END else (len(frame), memoryview(frame))

    def get_result(self):
        return None


def stream_over(chunks):
    stream = ReplicationStream(SimpleNamespace(pgconn=ArrivingFrames(chunks)))

    async def no_socket_wait(_timeout):
        await asyncio.sleep(0)

    stream._wait_readable = no_socket_wait
    return stream


async def read_all(stream, calls, limit=128):
    batches = []
    for _ in range(calls):
        batches.append([bytes(f) for f in await stream.read_frames(0.05, limit)])
    return batches


def test_frames_come_in_order_in_batches_of_at_most_the_limit():
    frames = [b"f%03d" % i for i in range(300)]
    batches = asyncio.run(read_all(stream_over([frames[:250], [], frames[250:]]), 4))
    assert [len(b) for b in batches] == [128, 122, 50, 0]
    assert [frame for batch in batches for frame in batch] == frames


def test_the_frames_before_the_end_of_the_stream_are_handed_over_first():
    stream = stream_over([[b"a", b"b"], [b"c", END]])

    async def scenario():
        first = await read_all(stream, 1)
        with pytest.raises(DatabaseUnavailableError, match="ended the replication stream"):
            await stream.read_frames(0.05, 128)
        return first

    assert asyncio.run(scenario()) == [[b"a", b"b", b"c"]]


def test_nothing_within_the_timeout_is_an_empty_batch():
    assert asyncio.run(read_all(stream_over([]), 2)) == [[], []]


def test_a_socket_wait_needs_no_asyncio_wait_and_leaves_nothing_registered(monkeypatch):
    """The stream waits on its socket once or twice per transaction: a future and a
    timer, not ``asyncio.wait``; readable, timed out or cancelled, the reader goes."""
    import socket

    async def no_asyncio_wait(*_args, **_kwargs):
        raise AssertionError("asyncio.wait used")

    monkeypatch.setattr(asyncio, "wait", no_asyncio_wait)
    ours, theirs = socket.socketpair()

    async def scenario():
        loop = asyncio.get_running_loop()
        stream = ReplicationStream(SimpleNamespace(pgconn=SimpleNamespace(socket=ours.fileno())))
        started = loop.time()
        await stream._wait(readable=True, timeout=0.02)  # nothing arrives: the timeout
        assert loop.time() - started >= 0.015
        theirs.send(b"x")
        await stream._wait(readable=True, timeout=30)  # returns at once
        assert loop.time() - started < 5
        ours.recv(1)
        waiting = asyncio.ensure_future(stream._wait(readable=True, timeout=30))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not loop.remove_reader(ours.fileno())  # nothing left registered

    try:
        asyncio.run(scenario())
    finally:
        ours.close()
        theirs.close()


class SocketLibpq:
    """libpq reading one end of a socket pair, each byte a frame."""

    def __init__(self, sock):
        sock.setblocking(False)
        self._sock = sock
        self.socket = sock.fileno()
        self.buffered = b""
        self.broken = False

    def consume_input(self):
        if self.broken:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        with contextlib.suppress(BlockingIOError):
            self.buffered += self._sock.recv(4096)

    def get_copy_data(self, _async):
        if not self.buffered:
            return 0, b""
        frame, self.buffered = self.buffered[:1], self.buffered[1:]
        if frame == b"!":  # stands for the server's CopyDone
            return -1, b""
        return 1, memoryview(frame)

    def get_result(self):
        return None


class SocketPair:
    """A stream over one end of a socket pair, and the registrations the loop got."""

    def __init__(self, monkeypatch, loop):
        self.ours, self.theirs = socket.socketpair()
        self.libpq = SocketLibpq(self.ours)
        self.stream = ReplicationStream(SimpleNamespace(pgconn=self.libpq, closed=True))
        self.add_reader = Counted(loop.add_reader)
        monkeypatch.setattr(loop, "add_reader", self.add_reader)

    @property
    def added(self):
        return self.add_reader.calls

    def registered(self, loop):
        """Is the socket registered? (Asking removes it.)"""
        return loop.remove_reader(self.ours.fileno())

    def close(self):
        self.ours.close()
        self.theirs.close()


def test_the_readers_socket_stays_registered_between_waits(monkeypatch):
    """A wait per transaction: the socket is registered once, not once per wait."""

    async def scenario():
        loop = asyncio.get_running_loop()
        pair = SocketPair(monkeypatch, loop)
        try:
            for frame in (b"x", b"y", b"z"):
                pair.theirs.send(frame)
                assert [bytes(f) for f in await pair.stream.read_frames(30, 128)] == [frame]
            assert await pair.stream.read_frames(0.01, 128) == []  # nothing comes
            assert pair.added == 1
            assert pair.registered(loop)
        finally:
            pair.close()

    asyncio.run(scenario())


def test_data_nobody_waits_for_unregisters_the_socket_instead_of_spinning(monkeypatch):
    """The reader pauses (the broker is behind) while frames arrive: the loop must not
    call back on every turn for data that stays in the socket."""

    async def scenario():
        loop = asyncio.get_running_loop()
        pair = SocketPair(monkeypatch, loop)
        try:
            await pair.stream._wait_readable(0.01)
            pair.stream._on_readable = counting = Counted(pair.stream._on_readable)
            loop.add_reader(pair.ours.fileno(), counting)  # as registered, counted
            pair.theirs.send(b"x")  # and nobody reads it
            for _ in range(20):
                await asyncio.sleep(0)
            assert counting.calls == 1
            assert not pair.registered(loop)
            assert await pair.stream._wait_readable(30)  # registered again: at once
            assert pair.added == 3
        finally:
            pair.close()

    asyncio.run(scenario())


def test_readiness_the_reader_already_used_up_does_not_wake_it(monkeypatch):
    """The event loop can call back for data the reader's task took in the same turn,
    just before it began a new wait: that wait must go on until a frame comes."""

    async def scenario():
        loop = asyncio.get_running_loop()
        pair = SocketPair(monkeypatch, loop)
        try:
            waiting = asyncio.ensure_future(pair.stream._wait_readable(30))
            await asyncio.sleep(0.01)  # waiting on an empty socket
            pair.stream._on_readable()  # the stale call: nothing in the socket
            await asyncio.sleep(0.01)
            assert not waiting.done()
            pair.theirs.send(b"x")
            assert await asyncio.wait_for(waiting, 5) is True
            # the frame the callback saw is the reader's first
            assert [bytes(f) for f in await pair.stream.read_frames(0.01, 128)] == [b"x"]
        finally:
            pair.close()

    asyncio.run(scenario())


def test_a_read_that_fails_in_the_readiness_callback_reaches_the_reader(monkeypatch):
    async def scenario():
        loop = asyncio.get_running_loop()
        pair = SocketPair(monkeypatch, loop)
        try:
            reading = asyncio.ensure_future(pair.stream.read_frames(30, 128))
            await asyncio.sleep(0.01)
            pair.libpq.broken = True
            pair.theirs.send(b"x")
            with pytest.raises(DatabaseUnavailableError, match="server closed the connection"):
                await asyncio.wait_for(reading, 5)
            assert not pair.registered(loop)
        finally:
            pair.close()

    asyncio.run(scenario())


def test_closing_or_breaking_the_stream_unregisters_its_socket(monkeypatch):
    """libpq may close a broken connection's socket, and the next connection may get its
    number: the event loop must not keep it."""

    async def scenario():
        loop = asyncio.get_running_loop()
        pair = SocketPair(monkeypatch, loop)
        try:
            await pair.stream._wait_readable(0.01)
            await pair.stream.close()
            assert not pair.registered(loop)
            await pair.stream._wait_readable(0.01)
            pair.stream._failed_with(psycopg.OperationalError("server closed the connection"))
            assert not pair.registered(loop)
        finally:
            pair.close()

    asyncio.run(scenario())


class EndedWithAnError:
    """libpq after it took the server's ErrorResponse: the COPY is over, so reading copy
    data raises, and the error waits as the connection's result."""

    def __init__(self, sqlstate):
        self.socket = -1
        self._result = SimpleNamespace(
            status=pq.ExecStatus.FATAL_ERROR,
            error_message=b"ERROR: publication does not exist",
            error_field=lambda field: {
                pq.DiagnosticField.SQLSTATE: sqlstate,
                pq.DiagnosticField.MESSAGE_PRIMARY: b'publication "p" does not exist',
            }.get(field),
        )

    def consume_input(self):
        pass

    def put_copy_data(self, _data):
        raise psycopg.OperationalError('sending copy data failed: publication "p" does not exist')

    def get_copy_data(self, _async):
        raise psycopg.OperationalError("no COPY in progress")

    def get_result(self):
        result, self._result = self._result, None
        return result


def test_a_status_update_refused_after_the_servers_error_raises_that_error():
    """Its SQLSTATE decides (undefined object: the slot is made again), not a broken
    connection retried as one."""
    stream = ReplicationStream(SimpleNamespace(pgconn=EndedWithAnError(b"42704")))
    with pytest.raises(SlotMissingError, match='publication "p" does not exist'):
        asyncio.run(stream.send_status(1, 1))


class ErrorAfterFrames(EndedWithAnError):
    """The reader got the frames before the server's error, then the error itself."""

    def __init__(self, sqlstate):
        super().__init__(sqlstate)
        self._frames = [b"a", END]

    def get_copy_data(self, _async):
        if not self._frames:
            raise psycopg.OperationalError("no COPY in progress")
        frame = self._frames.pop(0)
        return (-1, b"") if frame is END else (len(frame), memoryview(frame))


def test_a_status_update_after_the_reader_took_the_servers_error_raises_that_error():
    """The reader still hands over the frames before the error; the progress loop's
    status update, refused meanwhile, ends the stream with the server's error too."""
    stream = ReplicationStream(SimpleNamespace(pgconn=ErrorAfterFrames(b"42704")))

    async def scenario():
        assert [bytes(f) for f in await stream.read_frames(0.05, 128)] == [b"a"]
        await stream.send_status(1, 1)

    with pytest.raises(SlotMissingError, match='publication "p" does not exist'):
        asyncio.run(scenario())


class Handler:
    """What the session's frame handler would do: note each frame; raise on b"?"."""

    def __init__(self):
        self.frames = []
        self.room = True

    def __call__(self, frame):
        if bytes(frame) == b"?":
            raise PermanentError("a frame the handler cannot take")
        self.frames.append(bytes(frame))


def reading_with(pair, handler, limit=128):
    pair.stream.hand_over_while_waiting(handler, lambda: handler.room, limit)
    return asyncio.ensure_future(pair.stream.read_frames(30, 128))


async def settle():
    for _ in range(5):
        await asyncio.sleep(0.01)


def with_handler(monkeypatch, scenario):
    """Run ``scenario(pair, handler)`` over a fresh socket pair, closed afterwards."""

    async def run():
        pair = SocketPair(monkeypatch, asyncio.get_running_loop())
        try:
            await scenario(pair, Handler())
        finally:
            pair.close()

    asyncio.run(run())


def test_frames_that_come_while_the_reader_waits_go_to_the_handler_without_waking_it(
    monkeypatch,
):
    async def scenario(pair, handler):
        pair.stream._take_arrived = taken = Counted(pair.stream._take_arrived)
        reading = reading_with(pair, handler)
        await settle()
        for frame in (b"ab", b"c"):  # two readable moments, one wait
            pair.theirs.send(frame)
            await settle()
        assert handler.frames == [b"a", b"b", b"c"]
        assert not reading.done() and taken.calls == 1  # nobody woke the reader
        pair.theirs.send(b"!")  # the end: the reader wakes and says so
        with pytest.raises(DatabaseUnavailableError, match="ended the replication"):
            await asyncio.wait_for(reading, 5)

    with_handler(monkeypatch, scenario)


def test_without_room_or_past_the_limit_the_reader_takes_the_rest_in_order(monkeypatch):
    async def scenario(pair, handler):
        reading = reading_with(pair, handler, limit=2)
        await settle()
        pair.theirs.send(b"abcd")  # two for the handler, the rest for the reader
        assert [bytes(f) for f in await asyncio.wait_for(reading, 5)] == [b"c", b"d"]
        assert handler.frames == [b"a", b"b"]
        handler.room = False
        reading = reading_with(pair, handler)
        await settle()
        pair.theirs.send(b"ef")
        assert [bytes(f) for f in await asyncio.wait_for(reading, 5)] == [b"e", b"f"]
        assert handler.frames == [b"a", b"b"]

    with_handler(monkeypatch, scenario)


def test_what_the_handler_raises_the_reader_raises_after_the_frames_before(monkeypatch):
    async def scenario(pair, handler):
        reading = reading_with(pair, handler)
        await settle()
        pair.theirs.send(b"a?b")
        with pytest.raises(PermanentError, match="cannot take"):
            await asyncio.wait_for(reading, 5)
        assert handler.frames == [b"a"]

    with_handler(monkeypatch, scenario)
