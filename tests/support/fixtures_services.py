"""Fixtures for the real services: PostgreSQL, a Kafka-protocol broker and RabbitMQ.

Each service comes from the first source that applies:

1. the environment: ``OUTBOX_RELAY_TEST_DSN``, ``OUTBOX_RELAY_TEST_KAFKA`` (bootstrap
   servers), ``OUTBOX_RELAY_TEST_AMQP_URL``;
2. testcontainers, when a Docker engine answers;
3. local processes: a ThrowawayPostgres, a Tansu broker, and the RabbitMQ already running on
   127.0.0.1:5672 (or a private node if none answers there).

``OUTBOX_RELAY_TEST_SERVICES=local`` (or ``docker``) skips the Docker probe (or insists on
Docker). Services start on first use only, so a unit-test run starts nothing; session
finalizers stop them, and tests.support's atexit hook kills any the finalizers missed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.support import containers
from tests.support.services import (
    LocalService,
    PrivateRabbitMQ,
    ServiceError,
    TansuBroker,
    ThrowawayPostgres,
    create_database,
    docker_engine_available,
    drop_database,
    shared_rabbitmq_url,
)

ENV_DSN = "OUTBOX_RELAY_TEST_DSN"
ENV_KAFKA = "OUTBOX_RELAY_TEST_KAFKA"
ENV_AMQP_URL = "OUTBOX_RELAY_TEST_AMQP_URL"
ENV_SERVICES = "OUTBOX_RELAY_TEST_SERVICES"


@dataclass(frozen=True)
class ServiceSource:
    """Where a service came from: its address, and the local process if we run it."""

    address: str
    origin: str  # "environment", "container" or "local"
    local: LocalService | None = None


def _use_containers() -> bool:
    choice = os.environ.get(ENV_SERVICES, "auto")
    if choice not in ("auto", "local", "docker"):
        raise pytest.UsageError(f"{ENV_SERVICES} must be auto, local or docker, not {choice!r}")
    if choice == "local":
        return False
    if choice == "docker" and not docker_engine_available():
        raise pytest.UsageError(f"{ENV_SERVICES}=docker, but no Docker engine answers")
    return docker_engine_available()


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _postgres_source() -> Iterator[ServiceSource]:
    if dsn := os.environ.get(ENV_DSN):
        yield ServiceSource(dsn, "environment")
    elif _use_containers():
        with containers.postgres_container() as dsn:
            yield ServiceSource(dsn, "container")
    else:
        with ThrowawayPostgres() as server, _restored_after_each_test(server):
            yield ServiceSource(server.dsn, "local", server)


@pytest.fixture(scope="session")
def postgres(_postgres_source: ServiceSource) -> ThrowawayPostgres | None:
    """The session's ThrowawayPostgres, for fault tests; None when PostgreSQL came from the
    environment or a container."""
    local = _postgres_source.local
    return local if isinstance(local, ThrowawayPostgres) else None


@pytest.fixture(scope="session")
def pg_dsn(_postgres_source: ServiceSource) -> str:
    """Server-level DSN of the session's PostgreSQL (wal_level=logical, superuser)."""
    return _postgres_source.address


@pytest.fixture
def db_dsn(_postgres_source: ServiceSource) -> Iterator[str]:
    """DSN of a fresh database for this test, dropped (with FORCE) afterwards."""
    name = f"t_{secrets.token_hex(4)}"
    dsn = create_database(_postgres_source.address, name)
    yield dsn
    _bring_back(_postgres_source.local)  # a fault test may have left the server down
    drop_database(_postgres_source.address, name)


# --- Kafka protocol -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def _kafka_source() -> Iterator[ServiceSource]:
    if bootstrap := os.environ.get(ENV_KAFKA):
        yield ServiceSource(bootstrap, "environment")
    elif _use_containers():
        with containers.kafka_container() as bootstrap:
            yield ServiceSource(bootstrap, "container")
    else:
        with TansuBroker() as broker, _restored_after_each_test(broker):
            yield ServiceSource(broker.bootstrap, "local", broker)


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_source: ServiceSource) -> str:
    """``bootstrap.servers`` of the session's Kafka-protocol broker."""
    return _kafka_source.address


@pytest.fixture(scope="session")
def tansu(_kafka_source: ServiceSource) -> TansuBroker:
    """The session's Tansu broker behind ``kafka_bootstrap``, for fault tests.

    Its storage is in memory: stopping or killing it loses every topic. Prefer
    ``private_tansu`` for tests that break the broker.
    """
    broker = _kafka_source.local
    if not isinstance(broker, TansuBroker):
        pytest.skip(
            f"the Kafka broker comes from the {_kafka_source.origin}, not a local Tansu"
            " process that a fault test may stop"
        )
    return broker


@pytest.fixture
def private_tansu() -> Iterator[TansuBroker]:
    """A Tansu broker for this test alone (it starts in well under a second)."""
    with TansuBroker() as broker:
        yield broker


# --- RabbitMQ -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of the session's own, which fault tests may stop, kill or pause."""
    try:
        node = PrivateRabbitMQ()
    except ServiceError as exc:
        pytest.skip(f"cannot run a private RabbitMQ node: {exc}")
    with node, _restored_after_each_test(node):
        yield node


@pytest.fixture(scope="session")
def _amqp_source(request: pytest.FixtureRequest) -> Iterator[ServiceSource]:
    if from_env := os.environ.get(ENV_AMQP_URL):
        yield ServiceSource(from_env, "environment")
    elif _use_containers():
        with containers.rabbitmq_container() as url:
            yield ServiceSource(url, "container")
    elif shared := shared_rabbitmq_url():
        yield ServiceSource(shared, "local")
    else:
        node: PrivateRabbitMQ = request.getfixturevalue("private_rabbitmq")
        yield ServiceSource(node.url, "local", node)


@pytest.fixture(scope="session")
def amqp_url(_amqp_source: ServiceSource) -> str:
    """AMQP URL of the session's RabbitMQ (the shared node on 127.0.0.1:5672 by default)."""
    return _amqp_source.address


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory of short names no other test uses: ``unique_name("topic")`` ->
    ``"topic_3fa9c1"``."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}_{secrets.token_hex(3)}"

    return make


# session-scoped local services that fault tests may stop, kill or pause
_BREAKABLE: list[LocalService] = []


@contextmanager
def _restored_after_each_test(service: LocalService) -> Iterator[None]:
    _BREAKABLE.append(service)
    try:
        yield
    finally:
        _BREAKABLE.remove(service)


@pytest.fixture(autouse=True)
def _restore_broken_services() -> Iterator[None]:
    """After each test, bring back any session service it left stopped or paused, so that
    one failed fault test cannot fail the tests after it. Starts nothing otherwise."""
    yield
    for service in _BREAKABLE:
        _bring_back(service)


def _bring_back(service: LocalService | None) -> None:
    if service is None:
        return
    if service.paused:
        service.resume()
    service.start()  # waits until ready; a no-op when it runs
