"""The connector conformance suite (relay/testing/conformance.py), run against each of
the relay's connectors and a real broker of its own: Tansu for Kafka, a private RabbitMQ
node (both can be frozen with SIGSTOP and restarted)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay.testing.conformance import ConnectorConformance
from tests.support.kafka_harness import KafkaHarness
from tests.support.rabbitmq_harness import RabbitMQHarness

pytestmark = pytest.mark.integration


class TestKafkaConnector(ConnectorConformance):
    @pytest.fixture
    def connector_harness(self, private_tansu) -> Iterator[KafkaHarness]:
        harness = KafkaHarness(private_tansu.bootstrap, private_tansu)
        yield harness
        harness.cleanup()


class TestRabbitMQConnector(ConnectorConformance):
    @pytest.fixture
    def connector_harness(self, private_rabbitmq, unique_name) -> Iterator[RabbitMQHarness]:
        harness = RabbitMQHarness(private_rabbitmq.url, unique_name("outbox_ex"), private_rabbitmq)
        yield harness
        harness.cleanup()
