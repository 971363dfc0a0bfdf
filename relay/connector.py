"""The connector protocol and the registry that finds connectors by name.

A connector is the only piece that talks to a broker. It is deliberately small
(Watermill's Publisher, Debezium Server's sink): open, publish one batch with a timeout
and get exactly one outcome per message, close. Retries, ordering, leases and metrics
live outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from relay.config import RelayConfig
from relay.errors import ConfigError
from relay.model import OutboxMessage, Outcome

ENTRY_POINT_GROUP = "outbox_relay.connectors"


@runtime_checkable
class Connector(Protocol):
    """A broker client that publishes batches of outbox messages."""

    name: str

    async def open(self) -> None:
        """Connect and verify the broker is usable. Raises a RelayError when not."""

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        """Publish ``batch`` in order; return one outcome per message, in batch order.

        Must return within ``timeout`` seconds (plus a small grace) and must not raise for
        a per-message failure: a broker that is down yields RETRYABLE outcomes.
        Messages with the same key must reach the broker in batch order.
        """
        ...

    async def close(self, *, timeout: float) -> None:
        """Release the broker connection. Harmless when called twice or before open."""


class ConnectorFactory(Protocol):
    @classmethod
    def from_config(cls, config: RelayConfig) -> Connector: ...


def installed_connectors() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_connector(config: RelayConfig) -> Connector:
    """Build the connector named in ``config``; an unknown name lists the installed ones."""
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == config.connector]
    if not matches:
        names = ", ".join(installed_connectors()) or "none"
        raise ConfigError(f"unknown connector {config.connector!r}; installed connectors: {names}")
    factory: ConnectorFactory = matches[0].load()
    return factory.from_config(config)
