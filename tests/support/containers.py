"""The testcontainers path: PostgreSQL, Kafka and RabbitMQ in Docker containers.

Used by the service fixtures when a Docker engine answers (see fixtures_services.py). Each
context manager yields the address to connect to and removes its container on exit;
testcontainers' Ryuk sidecar removes it too if the test process dies first.

testcontainers is imported inside the functions: it is a dev dependency, its RabbitMQ module
pulls in pika, and importing it costs time that unit-test runs should not pay.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

POSTGRES_IMAGE = "postgres:16-alpine"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
RABBITMQ_IMAGE = "rabbitmq:3.13-alpine"

_POSTGRES_COMMAND = (
    "postgres -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
    " -c max_connections=200 -c fsync=off -c full_page_writes=off"
)
# The image's pg_hba.conf lets replication connections in from 127.0.0.1 only, but ours
# arrive through Docker's port mapping, from the bridge network.
_ALLOW_REPLICATION = (
    'echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"'
    ' && psql -U postgres -c "SELECT pg_reload_conf()"'
)


@contextmanager
def _tolerate_testcontainers_deprecations() -> Iterator[None]:
    # filterwarnings = error would turn testcontainers' own use of its deprecated wait
    # helpers (RabbitMqContainer's readiness probe) into a fixture error
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"testcontainers\.")
        yield


@contextmanager
def postgres_container(image: str = POSTGRES_IMAGE) -> Iterator[str]:
    """PostgreSQL with logical decoding enabled; yields a server-level DSN."""
    with _tolerate_testcontainers_deprecations():
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer(
            image, username="postgres", password="postgres", dbname="postgres", driver=None
        ).with_command(_POSTGRES_COMMAND)
        container.start()
    try:
        result = container.exec(["sh", "-c", _ALLOW_REPLICATION])
        if result.exit_code != 0:
            raise RuntimeError(f"could not allow replication connections: {result.output!r}")
        yield container.get_connection_url(driver=None)
    finally:
        container.stop()


@contextmanager
def kafka_container(image: str = KAFKA_IMAGE) -> Iterator[str]:
    """A Kafka broker; yields its bootstrap address."""
    with _tolerate_testcontainers_deprecations():
        from testcontainers.community.kafka import KafkaContainer

        container = KafkaContainer(image)
        container.start()
    try:
        yield container.get_bootstrap_server()
    finally:
        container.stop()


@contextmanager
def rabbitmq_container(image: str = RABBITMQ_IMAGE) -> Iterator[str]:
    """A RabbitMQ broker; yields an AMQP URL for its default vhost."""
    # not guest: RabbitMQ lets guest in from loopback only, and Docker's port mapping is not
    with _tolerate_testcontainers_deprecations():
        from testcontainers.community.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer(image, username="outbox", password="outbox")
        container.start()
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        yield f"amqp://outbox:outbox@{host}:{port}/%2F"
    finally:
        container.stop()
