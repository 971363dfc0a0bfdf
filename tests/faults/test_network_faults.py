"""PostgreSQL restarted, and the network to PostgreSQL or the broker cut or stalled
(through tests/support/tcp_proxy.py): the relay reconnects without exiting or losing."""

from __future__ import annotations

import time

import pytest
from psycopg.conninfo import make_conninfo

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
from tests.support.kafka_harness import KafkaHarness
from tests.support.services import TansuBroker, free_port
from tests.support.tcp_proxy import tcp_proxy

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def finish(work: Workload, read, name: str, recovery: float) -> Figures:
    work.stop_writer()
    drain = work.wait_drained(timeout=90)
    expected = work.expected()
    figures = judge(Figures(name), read_everything(read, expected), expected)
    figures.recovery_seconds = round(recovery, 2)
    figures.drain_seconds = round(drain, 2)
    figures.dead_letters = len(work.dead_letters())
    return figures


def test_postgres_restarted_mid_drain(outbox, postgres, kafka, relays, report):
    if postgres is None:
        pytest.skip("PostgreSQL comes from the environment or a container: cannot restart it")
    topic = kafka.new_topic(partitions=2)
    work = Workload(outbox, topic)
    work.backlog(3000)
    work.start_writer(per_second=100)
    relay = relays(*kafka_args(kafka.bootstrap))
    work.wait_progress(since=600, timeout=60)
    postgres.restart()  # a fast shutdown ends every session of the relay mid-batch
    sent = work.sent()
    recovery = wait_for(lambda: work.sent() > sent, 60, "the relay to reconnect and go on")
    figures = finish(work, lambda n, t: kafka.read(topic, n, t), "postgres restarted", recovery)
    report(figures)
    assert_clean(figures)
    assert relay.proc.poll() is None
    assert relay.terminate() == 0


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_network_to_postgres_cut_or_stalled(outbox, postgres, kafka, relays, report, fault):
    if postgres is None:
        pytest.skip("needs the local PostgreSQL to put a proxy in front of it")
    topic = kafka.new_topic(partitions=2)
    work = Workload(outbox, topic)
    work.backlog(2000)
    work.start_writer(per_second=100)
    with tcp_proxy(postgres.port) as proxy:
        relay = relays(*kafka_args(kafka.bootstrap), dsn=make_conninfo(outbox, port=proxy.port))
        work.wait_progress(since=400, timeout=60)
        getattr(proxy, fault)()
        hold_fault(5.0)  # longer than the lease TTL: the relay's leases and batch lapse
        proxy.restore()
        sent = work.sent()
        recovery = wait_for(lambda: work.sent() > sent, 60, "the relay to recover")
        figures = finish(
            work, lambda n, t: kafka.read(topic, n, t), f"network to postgres {fault}", recovery
        )
        report(figures)
        assert_clean(figures)
        assert relay.proc.poll() is None
        assert relay.terminate() == 0


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_network_to_rabbitmq_cut_or_stalled(
    outbox, rabbit, private_rabbitmq, relays, report, fault
):
    topic = rabbit.new_topic()
    work = Workload(outbox, topic)
    work.backlog(1500)
    work.start_writer(per_second=100)
    with tcp_proxy(private_rabbitmq.port) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        relay = relays(*rabbit_args(url, rabbit.exchange))
        work.wait_progress(since=400, timeout=60)
        getattr(proxy, fault)()
        cut_at = time.monotonic()
        hold_fault(5.0)
        proxy.restore()
        sent = work.sent()
        recovery = wait_for(lambda: work.sent() > sent, 60, "the relay to recover")
        figures = finish(
            work, lambda n, t: rabbit.read(topic, n, t), f"network to rabbitmq {fault}", recovery
        )
        figures.notes = {"fault_seconds": round(time.monotonic() - cut_at - recovery, 1)}
        report(figures)
        assert_clean(figures)
        assert relay.proc.poll() is None
        assert relay.terminate() == 0


class ProxiedTansu(TansuBroker):
    """A Tansu that tells clients to connect through ``advertised`` (the proxy): Kafka
    clients use the advertised address for everything after the bootstrap."""

    def __init__(self, port: int, advertised: str) -> None:
        super().__init__(port=port)
        self.advertised = advertised

    def _command(self) -> list[str]:
        command = super()._command()
        command[command.index("--advertised-listener-url") + 1] = f"tcp://{self.advertised}"
        return command


def test_network_to_kafka_cut(outbox, relays, report):
    port = free_port()
    with tcp_proxy(port) as proxy, ProxiedTansu(port, proxy.address):
        kafka = KafkaHarness(proxy.address)
        topic = kafka.new_topic(partitions=2)
        work = Workload(outbox, topic)
        work.backlog(1500)
        work.start_writer(per_second=100)
        relay = relays(*kafka_args(proxy.address))
        work.wait_progress(since=400, timeout=60)
        proxy.cut()
        hold_fault(5.0)
        proxy.restore()
        sent = work.sent()
        recovery = wait_for(lambda: work.sent() > sent, 60, "the relay to recover")
        figures = finish(
            work, lambda n, t: kafka.read(topic, n, t), "network to kafka cut", recovery
        )
        report(figures)
        assert_clean(figures)
        assert relay.proc.poll() is None
        assert relay.terminate() == 0
