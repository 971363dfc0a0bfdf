"""The RabbitMQ connector over amqps:// with mutual TLS, against a RabbitMQ node that
verifies client certificates: the URL alone (one secret) carries the CA, the client
certificate and its key."""

from __future__ import annotations

import asyncio
from urllib.parse import quote
from uuid import uuid4

import pytest

from connectors.rabbitmq import RabbitMQConnector
from relay.model import OutboxMessage
from tests.support.cli import outbox_relay
from tests.support.rabbitmq_harness import RabbitMQHarness, unique_exchange
from tests.support.services import PrivateRabbitMQ, ServiceError, free_port
from tests.support.tls import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration


class TlsRabbitMQ(PrivateRabbitMQ):
    """A private node with a TLS listener that requires a client certificate."""

    def __init__(self, tls: TlsFiles) -> None:
        super().__init__()
        self.tls = tls
        self.tls_port = free_port()

    def _prepare(self) -> None:
        super()._prepare()
        (self.base_dir / "rabbitmq.conf").write_text(
            "log.file.level = info\n"
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.tls.ca}\n"
            f"ssl_options.certfile = {self.tls.server_cert}\n"
            f"ssl_options.keyfile = {self.tls.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        )

    def _ports(self) -> list[int]:
        return [*super()._ports(), self.tls_port]

    def tls_url(self, *, client_certificate: bool = True) -> str:
        query = f"cacertfile={quote(str(self.tls.ca))}"
        if client_certificate:
            query += f"&certfile={quote(str(self.tls.client_cert))}"
            query += f"&keyfile={quote(str(self.tls.client_key))}"
        return f"amqps://guest:guest@localhost:{self.tls_port}/%2F?{query}"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    try:
        tls = make_tls_files(tmp_path_factory.mktemp("tls"))
        broker = TlsRabbitMQ(tls)
    except (FileNotFoundError, ServiceError) as exc:
        pytest.skip(f"cannot run a TLS RabbitMQ node: {exc}")
    with broker:
        broker.start()
        yield broker


def message(topic: str) -> OutboxMessage:
    return OutboxMessage(id=uuid4(), topic=topic, key="k", payload=b'{"over": "tls"}')


def test_mutual_tls_delivers_with_confirms(node):
    exchange = unique_exchange()
    connector = RabbitMQConnector(node.tls_url(), exchange=exchange, connect_timeout=10)

    harness = RabbitMQHarness(node.url, exchange)

    async def publish() -> list:
        await connector.open()
        try:
            topic = harness.new_topic()
            outcomes = await connector.publish([message(topic)], timeout=10)
            return [outcomes, harness.read(topic, 1, timeout=10)]
        finally:
            await connector.close(timeout=5)
            harness.cleanup()

    outcomes, received = asyncio.run(publish())
    assert [o.delivered for o in outcomes] == [True]
    assert received[0].value == b'{"over": "tls"}'


def test_without_a_client_certificate_the_broker_refuses(node, db_dsn):
    # Through the installed command: pika leaves a socket unclosed when the TLS handshake
    # fails, which filterwarnings = error would report against this test in-process.
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    result = outbox_relay(
        "run",
        "--dsn",
        db_dsn,
        "--connector",
        "rabbitmq",
        "--metrics-port",
        "0",
        "--amqp-url",
        node.tls_url(client_certificate=False),
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"outbox-relay: error: Cannot reach RabbitMQ at localhost:{node.tls_port}"
    )
