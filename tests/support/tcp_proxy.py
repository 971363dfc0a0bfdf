"""A TCP proxy for fault tests, since ``tc netem`` is not available: point a client at
``proxy.port`` instead of the service, then ``cut()``, ``stall()`` and ``restore()``.

- ``cut()``: every open connection is reset (both sides), and new ones are accepted and
  reset at once, like a peer that went away;
- ``stall()``: connections stay open but no byte moves in either direction, and new
  connections are accepted but go nowhere, like a black-holed route;
- ``restore()``: traffic flows again (stalled connections resume where they stopped).

It runs an asyncio loop in a daemon thread of its own, on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
CHUNK = 65536
T = TypeVar("T")


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name=f"tcp-proxy-{target_port}"
        )
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start)
        return self

    def cut(self) -> None:
        """Reset every connection and every new one until ``restore()``."""
        self._call(self._cut_all)

    def stall(self) -> None:
        """Stop moving bytes (open connections stay open) until ``restore()``."""
        self._call(self._stall)

    def restore(self) -> None:
        self._call(self._restore)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._call(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut_all(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        assert self._flowing is not None
        self._flowing.set()  # stalled pumps wake up, find their sockets reset, and end

    async def _stall(self) -> None:
        assert self._flowing is not None
        self._flowing.clear()

    async def _restore(self) -> None:
        assert self._flowing is not None
        self._cut = False
        self._flowing.set()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut_all()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._cut:
            _reset(writer)
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for end in (writer, up_writer):
            self._writers.discard(end)
            _reset(end)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            await self._flowing.wait()
            data = await source.read(CHUNK)
            if not data or self._cut:
                return
            await self._flowing.wait()
            if self._cut:
                return
            sink.write(data)
            await sink.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a vanished peer or a firewall would."""
    sock: Any = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def tcp_proxy(target_port: int, target_host: str = LOOPBACK) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port, target_host).start()
    try:
        yield proxy
    finally:
        proxy.close()
