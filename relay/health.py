"""``/healthz``, ``/readyz`` and ``/metrics`` on ``--metrics-host:--metrics-port``.

The server runs in a thread of its own with the standard library's HTTP server, not on
the relay's event loop: it answers while the loop is busy or wedged (and then says so),
and it shares no connection with the publish path. It only reads a :class:`HealthState`
that the loop's components update.

- ``/healthz`` (liveness): 200 while the drain loop keeps going round. Before every wait
  or batch the loop promises its next beat; a promise broken by more than ``slack``
  seconds means the loop is stuck, and a restart may help.
- ``/readyz`` (readiness): 200 when PostgreSQL answered recently (any duty's successful
  round trip), the connector's circuit is not open, and nothing keeps the outbox from
  being drained (``unready``: e.g. a CDC standby whose slot's leader does not stream it).
- ``/metrics``: the Prometheus text format of the relay's registry.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay.errors import PermanentError

log = logging.getLogger(__name__)

LOOP_SLACK = 10.0  # seconds a beat may come late before /healthz fails
STARTUP = "start-up"
# A prober sends its request at once; a connection that sends nothing for this long is
# closed, so idle or half-open connections cannot pile up.
READ_TIMEOUT = 5.0
# Connections served at once, a thread each; more are closed on arrival. Probes and
# scrapes come a few at a time: the cap only stops a flood from costing a thread each.
MAX_CONNECTIONS = 16


@dataclass
class Verdict:
    ok: bool
    detail: dict[str, Any]


class Probes(Protocol):
    """What the probe server asks: a HealthState, or every outbox's (relay.fleet_health)."""

    def liveness(self) -> Verdict: ...

    def readiness(self) -> Verdict: ...


class HealthState:
    """What the probes look at; written from the event loop, read from the HTTP thread
    (single float and string assignments, which are atomic in CPython)."""

    def __init__(
        self,
        *,
        db_stale_after: float = 30.0,
        slack: float = LOOP_SLACK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._slack = slack
        self._db_stale_after = db_stale_after
        # Each drain loop's promise of its next beat, by loop name. Start-up (preflight
        # and connector.open()) gets a minute, and is forgotten at the first beat.
        self._promises: dict[str, float] = {STARTUP: clock() + 60.0}
        self._db_answered_at: float | None = None
        self.circuit: Callable[[], str] = lambda: "closed"
        self.started = False
        # Why nobody drains this outbox though everything here answers (None: nothing).
        self.unready: str | None = None

    def beat(self, next_within: float, loop: str = "drain") -> None:
        """``loop`` is alive, and promises to beat again within ``next_within`` seconds.

        Each loop (one per claim lane) keeps its own promise, so a lane that is stuck
        is seen even while the others keep beating."""
        self._promises[loop] = self._clock() + next_within
        if not self.started:
            self._promises.pop(STARTUP, None)
            self.started = True

    def forget(self, loop: str) -> None:
        """``loop`` has ended: its last promise no longer counts."""
        self._promises.pop(loop, None)

    def database_answered(self) -> None:
        self._db_answered_at = self._clock()

    def liveness(self) -> Verdict:
        # A copy taken in one C call: the event loop may add a loop's first promise now.
        promises = list(self._promises.items())
        if not promises:  # between a loop that ended and the next one's first beat
            return Verdict(True, {"loop": "running"})
        loop, due = min(promises, key=lambda promise: promise[1])  # the most overdue
        late = self._clock() - due
        ok = late <= self._slack
        return Verdict(ok, {"loop": "running" if ok else f"{loop} stuck for {late:.0f}s"})

    def readiness(self) -> Verdict:
        now = self._clock()
        answered = self._db_answered_at
        db_ok = answered is not None and now - answered <= self._db_stale_after
        circuit = self.circuit()
        unready = self.unready
        ok = db_ok and circuit != "open" and self.started and unready is None
        detail: dict[str, Any] = {
            "database": "ok" if db_ok else "no recent answer",
            "database_answered_seconds_ago": None if answered is None else round(now - answered, 1),
            "broker_circuit": circuit,
            "started": self.started,
        }
        if unready is not None:
            detail["unready"] = unready
        return Verdict(ok, detail)


class _CappedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``cap`` at once; the rest are closed at once."""

    daemon_threads = True
    # handle_request()'s own wait, after serve_until saw a connection: one gone again
    # before it was accepted must not keep the thread from seeing stop() for good.
    timeout = 1.0
    # The kernel's queue of connections not yet accepted (the standard library's is 5):
    # a burst of probes and scrapes waits there instead of having its SYNs dropped.
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], cap: int
    ) -> None:
        self._slots = threading.BoundedSemaphore(cap)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def serve_until(self, stop: socket.socket) -> None:
        """Serve until ``stop`` turns readable. ``serve_forever`` looks for its shutdown
        request every ``poll_interval``, which wakes an idle relay several times a
        second; this sleeps until a connection or the stop comes."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(stop, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _events in selector.select()}
                if stop in ready:
                    return
                self.handle_request()


class HealthServer:
    """The HTTP server thread; ``start()`` binds (failing fast), ``stop()`` joins."""

    def __init__(
        self,
        host: str,
        port: int,
        state: Probes,
        registry: CollectorRegistry,
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
    ):
        self._address = (host, port)
        self._state = state
        self._registry = registry
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop_pair: tuple[socket.socket, socket.socket] | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._address[1]

    def start(self) -> None:
        if self._server is not None:
            return
        handler = _handler(self._state, self._registry, self._read_timeout)
        try:
            self._server = _CappedHTTPServer(self._address, handler, self._max_connections)
        except OSError as exc:
            # Probes sent to this port would reach the other process and call this relay
            # healthy whatever its state: refuse to start.
            host, port = self._address
            raise PermanentError(
                f"cannot serve metrics and health on {host}:{port}: "
                f"{(exc.strerror or type(exc).__name__).lower()} (another relay there?); "
                "choose another --metrics-port, or 0 to turn the server off"
            ) from None
        self._stop_pair = socket.socketpair()
        self._thread = threading.Thread(
            target=self._server.serve_until,
            args=(self._stop_pair[1],),
            name="health-server",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics and health on http://%s:%d/metrics", self._address[0], self.port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self._stop_pair is not None:
            self._stop_pair[0].send(b"\0")
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        server.server_close()
        if self._stop_pair is not None:
            for end in self._stop_pair:
                end.close()
            self._stop_pair = None


def _handler(
    state: Probes, registry: CollectorRegistry, read_timeout: float
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "outbox-relay"
        timeout = read_timeout  # the socket's; a silent client is dropped after it

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                verdict = state.liveness() if path == "/healthz" else state.readiness()
                body = orjson.dumps({"status": "ok" if verdict.ok else "fail", **verdict.detail})
                self._send(200 if verdict.ok else 503, body, "application/json")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            with contextlib.suppress(OSError):  # the prober hung up: nothing to tell it
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the relay's own log

    return Handler
