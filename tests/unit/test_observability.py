"""Metrics names, the health probes and structured logs, without a database or broker."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from relay.breaker import CircuitState
from relay.errors import PermanentError
from relay.health import HealthServer, HealthState
from relay.logs import JsonFormatter, ScrubSecrets
from relay.metrics import RelayMetrics

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exported_names() -> set[str]:
    """Every sample name the relay's registry can expose (labelled metrics included,
    which show no sample until a label value is used)."""
    endings = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    names = set()
    for family in RelayMetrics().registry.collect():
        names.update(family.name + end for end in endings.get(family.type, ("",)))
    # the per-session collector only shows with sessions; its names are fixed
    names |= {
        "outbox_relay_db_session_connected",
        "outbox_relay_db_session_connects_total",
        "outbox_relay_db_session_discards_total",
    }
    return names


def referenced_names(path: Path) -> set[str]:
    return set(re.findall(r"\b(outbox_relay_[a-z_]+)", path.read_text()))


def test_the_dashboard_and_the_alerts_use_only_metrics_the_relay_exports():
    exported = exported_names()
    for path in [
        ROOT / "deploy/grafana/dashboards/outbox-relay.json",
        ROOT / "deploy/prometheus/alerts.yml",
    ]:
        unknown = {n for n in referenced_names(path) if n not in exported}
        assert not unknown, f"{path.name} uses metrics the relay does not export: {unknown}"


def test_the_dashboard_is_valid_json_with_panels():
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/outbox-relay.json").read_text())
    assert dashboard["uid"] == "outbox-relay" and len(dashboard["panels"]) >= 10


def test_liveness_fails_when_the_loop_breaks_its_promise():
    clock = Clock()
    state = HealthState(slack=5.0, clock=clock)
    state.beat(10.0)
    clock.now += 14.0
    assert state.liveness().ok
    clock.now += 2.0
    verdict = state.liveness()
    assert not verdict.ok and "stuck" in verdict.detail["loop"]


def test_liveness_sees_one_stuck_lane_while_another_keeps_beating():
    clock = Clock()
    state = HealthState(slack=5.0, clock=clock)
    state.beat(10.0, "claim lane 0")
    for _ in range(20):
        clock.now += 1.0
        state.beat(1.0, "claim lane 1")
    verdict = state.liveness()
    assert not verdict.ok and verdict.detail["loop"] == "claim lane 0 stuck for 10s"
    state.beat(1.0, "claim lane 0")
    assert state.liveness().ok


def test_readiness_needs_a_recent_database_answer_and_a_circuit_that_is_not_open():
    clock = Clock()
    state = HealthState(db_stale_after=30.0, clock=clock)
    circuit = {"state": CircuitState.CLOSED}
    state.circuit = lambda: circuit["state"].value
    state.beat(1.0)
    assert not state.readiness().ok  # no database answer yet
    state.database_answered()
    assert state.readiness().ok
    circuit["state"] = CircuitState.OPEN
    assert not state.readiness().ok
    circuit["state"] = CircuitState.HALF_OPEN
    assert state.readiness().ok
    clock.now += 31.0
    assert state.readiness().detail["database"] == "no recent answer"


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_server_answers_the_three_paths_from_its_own_thread():
    metrics = RelayMetrics()
    metrics.describe(relay="r", mode="poll", connector="kafka")
    state = HealthState()
    server = HealthServer("127.0.0.1", 0, state, metrics.registry)
    server.start()
    try:
        assert fetch(server.port, "/healthz")[0] == 200
        status, body = fetch(server.port, "/readyz")
        assert status == 503 and json.loads(body)["database"] == "no recent answer"
        state.beat(5.0)
        state.database_answered()
        assert fetch(server.port, "/readyz")[0] == 200
        status, body = fetch(server.port, "/metrics")
        assert status == 200 and 'outbox_relay_circuit_state{connector="kafka"} 0.0' in body
        assert fetch(server.port, "/nowhere")[0] == 404
    finally:
        server.stop()
        server.stop()  # twice is harmless


def _voluntary_switches(thread):
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_server_sleeps_until_a_request_and_stops_at_once():
    """No look for a shutdown request every fraction of a second: an idle relay's
    server thread wakes for a connection, and stop() ends it without waiting."""
    server = HealthServer("127.0.0.1", 0, HealthState(), RelayMetrics().registry)
    server.start()
    try:
        thread = server._thread
        time.sleep(0.1)
        before = _voluntary_switches(thread)
        time.sleep(1.0)
        assert _voluntary_switches(thread) - before <= 1
        assert fetch(server.port, "/healthz")[0] == 200
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 1.0 and not thread.is_alive()


def test_a_connection_gone_before_it_was_accepted_does_not_hold_the_server_thread():
    """serve_until hands a readable listening socket to handle_request(), which waits
    again; with nothing left to accept, that wait ends, so stop() is still seen."""
    server = HealthServer("127.0.0.1", 0, HealthState(), RelayMetrics().registry)
    server.start()
    try:
        # nothing pending: as after a client that went away before it was accepted
        waiting = threading.Thread(target=server._server.handle_request, daemon=True)
        waiting.start()
        waiting.join(3.0)
        assert not waiting.is_alive()
    finally:
        server.stop()


def test_json_logs_have_stable_fields_and_no_secrets():
    record = logging.LogRecord(
        "outbox_relay.poller", logging.WARNING, __file__, 1,
        "cannot reach postgresql://relay:s3cret@db/app (token %s)", ("abc123",), None,
    )  # fmt: skip
    record.relay = "host:1"
    ScrubSecrets(["abc123"]).filter(record)
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["level"] == "warning" and entry["logger"] == "outbox_relay.poller"
    assert entry["relay"] == "host:1"
    assert "s3cret" not in line and "abc123" not in line
    assert entry["time"].endswith("+00:00")


def server_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_idle_connections_are_capped_and_dropped_after_the_read_timeout():
    """400 half-open connections once meant 400 threads, kept forever: now at most the
    cap are served at once (the others closed on arrival), and a connection that sends
    nothing is closed after the read timeout."""
    metrics = RelayMetrics()
    server = HealthServer(
        "127.0.0.1", 0, HealthState(), metrics.registry, max_connections=4, read_timeout=0.5
    )
    server.start()
    idle = []
    try:
        for _ in range(60):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            assert server_threads() <= 4
        for sock in idle:  # every one is closed by the server: EOF, within the deadline
            sock.settimeout(5)
            assert sock.recv(1) == b""
        deadline = time.monotonic() + 5
        while server_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server_threads() == 0
        assert fetch(server.port, "/healthz")[0] == 200  # and it still answers
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_taken_port_is_an_error_not_a_relay_without_probes():
    metrics = RelayMetrics()
    first = HealthServer("127.0.0.1", 0, HealthState(), metrics.registry)
    first.start()
    try:
        second = HealthServer("127.0.0.1", first.port, HealthState(), metrics.registry)
        taken = rf"cannot serve metrics and health on 127\.0\.0\.1:{first.port}: "
        with pytest.raises(PermanentError, match=taken + ".*--metrics-port, or 0"):
            second.start()
    finally:
        first.stop()
