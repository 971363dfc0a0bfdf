"""The broker goes away (paused, killed, blocked, closing connections): the relay stays
up, stops claiming while the circuit is open, burns no attempts, and loses nothing."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.faults.conftest import kafka_args, rabbit_args
from tests.faults.support import (
    Figures,
    Workload,
    assert_clean,
    hold_fault,
    judge,
    read_everything,
    wait_for,
)
from tests.support.services import free_port

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


BATCH = 100  # --batch-size in RELAY_TIMINGS
# A fault may strike each claim lane (--claim-lanes 2) with a batch in flight.
IN_FLIGHT = 2 * BATCH


def failed_attempts(port: int) -> float:
    """Attempts the relay counted against messages (``outbox_relay_failed_attempts_total``,
    all connectors). Delivered rows are deleted, so the relay's own count is the record."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("outbox_relay_failed_attempts_total{")
    )


def log_lines_between(output: str, start: float, end: float) -> int:
    """Lines the relay logged between two wall-clock times (text format timestamps)."""
    count = 0
    for line in output.splitlines():
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        count += start - 1 <= stamp <= end + 1
    return count


def finish(work: Workload, read, figures: Figures) -> Figures:
    """Stop writing, wait for the drain, read everything back and judge it."""
    work.stop_writer()
    figures.drain_seconds = round(work.wait_drained(timeout=90), 2)
    expected = work.expected()
    figures = judge(figures, read_everything(read, expected), expected)
    figures.dead_letters = len(work.dead_letters())
    return figures


def test_kafka_broker_paused_for_20_seconds(outbox, private_kafka, relays, report):
    topic = private_kafka.new_topic(partitions=2)
    work = Workload(outbox, topic)
    work.backlog(2000)
    work.start_writer(per_second=100)
    port = free_port()
    relay = relays(*kafka_args(private_kafka.bootstrap), "--metrics-port", str(port))
    work.wait_progress(since=500, timeout=60)
    wait_for(lambda: http_status(port, "/readyz") == 200, 20, "the relay to be ready")
    private_kafka.pause_broker()
    paused_at = time.time()
    try:
        wait_for(lambda: http_status(port, "/readyz") == 503, 20, "/readyz to report the outage")
        assert http_status(port, "/healthz") == 200  # alive: a restart would not help
        hold_fault(max(0.0, 20.0 - (time.time() - paused_at)))
    finally:
        private_kafka.resume_broker()
    resumed_at = time.time()
    sent = work.sent()
    recovery = work.wait_progress(since=sent, timeout=60)
    wait_for(lambda: http_status(port, "/readyz") == 200, 30, "/readyz to recover")
    figures = finish(
        work, lambda n, t: private_kafka.read(topic, n, t), Figures("kafka broker paused 20 s")
    )
    figures.recovery_seconds = round(recovery, 2)
    lines = log_lines_between(relay.output(), paused_at, resumed_at)
    figures.notes = {
        "log_lines_during_outage": lines,
        "failed_attempts": failed_attempts(port),
    }
    report(figures)
    assert_clean(figures)
    assert lines < 40, relay.output()  # transitions and a few warnings, not a flood
    # at most the batch in flight when the broker froze, partly confirmed, counts one
    # attempt per message; the outage itself (retries, probes) counts none
    assert figures.notes["failed_attempts"] <= IN_FLIGHT
    assert figures.dead_letters == 0
    assert relay.terminate() == 0


def test_rabbitmq_killed_and_restarted(outbox, rabbit, relays, report):
    topic = rabbit.new_topic()
    work = Workload(outbox, topic)
    work.backlog(1500)
    work.start_writer(per_second=100)
    port = free_port()
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange), "--metrics-port", str(port))
    work.wait_progress(since=400, timeout=60)
    rabbit._require_node().kill()  # SIGKILL the node: durable queues survive
    hold_fault(3.0)
    rabbit.start_broker()
    restarted_at_sent = work.sent()
    recovery = work.wait_progress(since=restarted_at_sent, timeout=60)
    figures = finish(
        work, lambda n, t: rabbit.read(topic, n, t), Figures("rabbitmq killed and restarted")
    )
    figures.recovery_seconds = round(recovery, 2)
    report(figures)
    assert_clean(figures)
    # at most the batch in flight when it struck, partly confirmed, counts one attempt;
    # the outage itself counts none
    assert failed_attempts(port) <= IN_FLIGHT
    assert relay.proc.poll() is None
    assert relay.terminate() == 0


def test_rabbitmq_server_closes_the_connection(outbox, rabbit, relays, report):
    topic = rabbit.new_topic()
    work = Workload(outbox, topic)
    work.backlog(1000)
    work.start_writer(per_second=100)
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange))
    work.wait_progress(since=300, timeout=60)
    wait_for(lambda: rabbit.drop_connector_connections() > 0, 20, "the broker to close it")
    sent = work.sent()
    recovery = work.wait_progress(since=sent, timeout=30)
    figures = finish(
        work, lambda n, t: rabbit.read(topic, n, t), Figures("rabbitmq closed the connection")
    )
    figures.recovery_seconds = round(recovery, 2)
    report(figures)
    assert_clean(figures)
    assert relay.terminate() == 0


def test_rabbitmq_resource_alarm_blocks_publishers(outbox, rabbit, relays, report):
    topic = rabbit.new_topic()
    work = Workload(outbox, topic)
    work.backlog(1000)
    work.start_writer(per_second=100)
    port = free_port()
    relay = relays(*rabbit_args(rabbit.url, rabbit.exchange), "--metrics-port", str(port))
    work.wait_progress(since=300, timeout=60)
    node = rabbit._require_node()
    node.ctl("set_vm_memory_high_watermark", "0.0000001")
    try:
        wait_for(lambda: "blocked" in relay.output(), 30, "the relay to notice the alarm")
        hold_fault(3.0)
    finally:
        node.ctl("set_vm_memory_high_watermark", "0.4")
    sent = work.sent()
    recovery = work.wait_progress(since=sent, timeout=60)
    figures = finish(work, lambda n, t: rabbit.read(topic, n, t), Figures("rabbitmq memory alarm"))
    figures.recovery_seconds = round(recovery, 2)
    report(figures)
    assert_clean(figures)
    # at most the batch in flight when it struck, partly confirmed, counts one attempt;
    # the outage itself counts none
    assert failed_attempts(port) <= IN_FLIGHT
    assert relay.terminate() == 0
