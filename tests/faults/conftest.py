"""Fixtures of the fault-injection suite: relays as real subprocesses, brokers the tests
may break, and the report every scenario writes (record_property and one JSON summary,
``faults-summary.json`` in pytest's base temporary directory)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.migrations import migrate
from tests.faults.support import RELAY_TIMINGS, Figures
from tests.support.cli import RelayProcess
from tests.support.kafka_harness import KafkaHarness
from tests.support.rabbitmq_harness import RabbitMQHarness, unique_exchange
from tests.support.services import PrivateRabbitMQ, TansuBroker
from tests.support.written_log import record_writes

_summary_lock = threading.Lock()


@pytest.fixture(scope="session")
def fault_summary_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "faults-summary.json"


@pytest.fixture
def report(
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
    fault_summary_path: Path,
) -> Callable[[Figures], None]:
    """Record a scenario's figures on the test and in the session's JSON summary."""

    def write(figures: Figures) -> None:
        for name, value in figures.as_dict().items():
            record_property(name, value)
        with _summary_lock:
            done = json.loads(fault_summary_path.read_text()) if fault_summary_path.exists() else []
            done.append({"test": request.node.nodeid, **figures.as_dict()})
            fault_summary_path.write_text(json.dumps(done, indent=2))

    return write


@pytest.fixture
def outbox(db_dsn: str) -> str:
    import psycopg

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "outbox")
    record_writes(db_dsn)  # delivered rows are deleted: loss is judged against this log
    return db_dsn


@pytest.fixture
def relays(outbox: str, tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start ``outbox-relay run`` on the test's outbox with the quick fault-test timings
    (``dsn=`` to reach it another way); all stopped by PID."""
    started: list[RelayProcess] = []

    def start(*args: str, dsn: str | None = None) -> RelayProcess:
        argv = ["--dsn", dsn or outbox, *RELAY_TIMINGS, *args]
        process = RelayProcess(argv, tmp_path / f"relay-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def kafka(kafka_bootstrap: str) -> Iterator[KafkaHarness]:
    harness = KafkaHarness(kafka_bootstrap)
    yield harness
    harness.cleanup()


@pytest.fixture
def private_kafka(private_tansu: TansuBroker) -> Iterator[KafkaHarness]:
    harness = KafkaHarness(private_tansu.bootstrap, private_tansu)
    yield harness


@pytest.fixture
def rabbit(private_rabbitmq: PrivateRabbitMQ) -> Iterator[RabbitMQHarness]:
    harness = RabbitMQHarness(private_rabbitmq.url, unique_exchange(), private_rabbitmq)
    yield harness
    harness.cleanup()


def kafka_args(bootstrap: str) -> list[str]:
    return ["--connector", "kafka", "--kafka-bootstrap", bootstrap]


def rabbit_args(url: str, exchange: str) -> list[str]:
    return ["--connector", "rabbitmq", "--amqp-url", url, "--amqp-exchange", exchange]
