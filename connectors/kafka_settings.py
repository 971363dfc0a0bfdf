"""The Kafka connector's settings: librdkafka's own names, with safe defaults.

The names are librdkafka's (``bootstrap.servers``, ``acks``, ...), as a Kafka Connect or
Kafka client user already knows them. The settings declared here are the ones the relay
sets itself; any other name is a librdkafka property and passes through verbatim (TLS,
SASL, tuning), where librdkafka checks it when the producer is created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from relay.connector_settings import ConnectorSettings, Passthrough, setting

DEFAULT_BOOTSTRAP = "localhost:9092"
LIBRDKAFKA_REFERENCE = "https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md"
# librdkafka's properties whose values are secrets: the ones its source marks
# _RK_SENSITIVE, less those that are only names or paths (sasl.username, ssl.key.location,
# ssl.ca.pem: scrubbing them would blank ordinary words out of every log line), plus
# sasl.jaas.config, which Java users paste in (librdkafka refuses it, naming it only).
LIBRDKAFKA_SECRETS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
        "sasl.jaas.config",
    }
)


@dataclass(frozen=True)
class KafkaSettings(ConnectorSettings):
    """What ``--connector kafka`` is configured with."""

    connector_name: ClassVar[str] = "kafka"
    passthrough: ClassVar[Passthrough | None] = Passthrough(
        "librdkafka property", LIBRDKAFKA_REFERENCE, LIBRDKAFKA_SECRETS
    )

    bootstrap_servers: str = setting(
        DEFAULT_BOOTSTRAP,
        name="bootstrap.servers",
        help="The brokers to ask for the cluster first: host:port[,host:port...].",
    )
    acks: str = setting(
        "all", help="all: a message counts as delivered once every in-sync replica has it."
    )
    enable_idempotence: str = setting(
        "true",
        name="enable.idempotence",
        help="true: retries inside librdkafka neither duplicate nor reorder a key's messages.",
    )
    compression_type: str = setting(
        "lz4",
        name="compression.type",
        help="Compression of each batch: none, gzip, snappy, lz4 or zstd.",
    )
    # A batch arrives whole, so lingering only delays it (benchmarks/README.md: a longer
    # linger slowed back-to-back batches).
    linger_ms: str = setting(
        "1", name="linger.ms", help="How long librdkafka waits to fill a batch, in ms."
    )

    def problems(self) -> list[str]:
        servers = [s.strip() for s in self.bootstrap_servers.split(",")]
        if not any(servers):
            return [
                "The Kafka connector has empty bootstrap servers: give --kafka-bootstrap "
                "host:port[,host:port] (or --connector-option bootstrap.servers=host:port)."
            ]
        if not all(servers):
            return ["The Kafka bootstrap servers have an empty entry between two commas."]
        return []

    def client_config(self, *, publish_timeout: float) -> dict[str, Any]:
        """The librdkafka configuration: the relay's defaults, the declared settings and
        then every pass-through property (which wins, message.timeout.ms included)."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "acks": self.acks,
            "enable.idempotence": self.enable_idempotence,
            "compression.type": self.compression_type,
            "linger.ms": self.linger_ms,
            "message.timeout.ms": max(1, round(publish_timeout * 1000)),
            **self.passed_through,
        }
