"""The real-service fixtures work: each service answers, and the local ones survive the
faults that the fault tests will inflict on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.support.services import (
    LOOPBACK,
    PrivateRabbitMQ,
    ServiceError,
    TansuBroker,
    ThrowawayPostgres,
    amqp_answers,
    free_port,
    tcp_accepts,
)

pytestmark = pytest.mark.integration


def _local_postgres(postgres: ThrowawayPostgres | None) -> ThrowawayPostgres:
    if postgres is None:
        pytest.skip("PostgreSQL comes from the environment or a container, not a local process")
    return postgres


def test_postgres_decodes_logically_and_accepts_replication(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SHOW wal_level").fetchone()
    assert row == ("logical",)
    with psycopg.connect(pg_dsn, replication="database", autocommit=True) as conn:
        system = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert system is not None and system[0]  # the cluster's system identifier


def test_db_dsn_is_a_fresh_database(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)
    assert name is not None and name[0].startswith("t_")


def _write_and_read_back(dsn: str, restart: Callable[[], None]) -> list[tuple[int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
    restart()
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT id FROM kept ORDER BY id").fetchall()


def test_postgres_restart_keeps_data(postgres: ThrowawayPostgres | None, db_dsn: str) -> None:
    server = _local_postgres(postgres)
    port = server.port
    assert _write_and_read_back(db_dsn, server.restart) == [(1,), (2,)]
    assert server.port == port


def test_postgres_crash_keeps_committed_data(
    postgres: ThrowawayPostgres | None, db_dsn: str
) -> None:
    server = _local_postgres(postgres)

    def crash_and_start() -> None:
        server.kill()
        assert not server.running
        server.start()

    assert _write_and_read_back(db_dsn, crash_and_start) == [(1,), (2,)]


def test_kafka_bootstrap_accepts_connections(kafka_bootstrap: str) -> None:
    host, _, port = kafka_bootstrap.split(",")[0].rpartition(":")
    assert tcp_accepts(host, int(port), timeout=5)


def test_tansu_stops_and_starts_on_the_same_port(private_tansu: TansuBroker) -> None:
    private_tansu.stop()
    assert not tcp_accepts(LOOPBACK, private_tansu.port)
    private_tansu.start()
    assert tcp_accepts(LOOPBACK, private_tansu.port)
    private_tansu.kill()
    assert not private_tansu.running


def test_amqp_url_answers(amqp_url: str) -> None:
    url = urlsplit(amqp_url)
    assert url.hostname is not None
    assert amqp_answers(url.hostname, url.port or 5672, timeout=5)


def test_private_rabbitmq_pauses_and_comes_back(private_rabbitmq: PrivateRabbitMQ) -> None:
    private_rabbitmq.pause()
    assert not amqp_answers(LOOPBACK, private_rabbitmq.port, timeout=0.5)
    private_rabbitmq.resume()
    assert amqp_answers(LOOPBACK, private_rabbitmq.port)
    private_rabbitmq.kill()
    assert not private_rabbitmq.running
    private_rabbitmq.start()
    assert amqp_answers(LOOPBACK, private_rabbitmq.port)


def test_unique_names_differ(unique_name: Callable[[str], str]) -> None:
    first, second = unique_name("topic"), unique_name("topic")
    assert first.startswith("topic_") and first != second


def _processes_started_for(marker: str) -> list[int]:
    """PIDs of live processes whose environment mentions ``marker`` (a node's own
    directory): whatever that node started, however detached (``epmd -daemon`` leaves
    the node's process group and session)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def test_a_private_rabbitmq_leaves_no_process_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine where no epmd runs yet: the node must not start one that outlives it.
    monkeypatch.setenv("ERL_EPMD_PORT", str(free_port()))
    try:
        node = PrivateRabbitMQ()
    except ServiceError as exc:
        pytest.skip(f"cannot run a private RabbitMQ node: {exc}")
    with node:
        assert amqp_answers(LOOPBACK, node.port)
        marker = str(node.base_dir)
        assert _processes_started_for(marker)  # the check sees the node's processes
    assert _processes_started_for(marker) == []
