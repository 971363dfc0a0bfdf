"""The contract every broker test harness fulfils, so one conformance suite covers all
connectors (tests/integration/test_connector_conformance.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from relay.config import RelayConfig


@dataclass(frozen=True)
class Received:
    """One message as a consumer saw it on the broker."""

    message_id: str | None
    topic: str
    key: str | None
    value: bytes | None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    # AMQP only: the ``timestamp`` property and whether delivery_mode was 2 (persistent).
    timestamp: int | None = None
    persistent: bool | None = None


class BrokerHarness(Protocol):
    connector_name: str

    def configure(self, base: RelayConfig) -> RelayConfig:
        """Return ``base`` with this broker's connection settings filled in."""
        ...

    def new_topic(self) -> str:
        """A fresh topic name, already made readable (Kafka: created; RabbitMQ: a queue
        bound to the exchange with this routing key)."""
        ...

    def read(self, topic: str, count: int, timeout: float) -> list[Received]:
        """Read until ``count`` messages arrived on ``topic`` or ``timeout`` passed;
        return what arrived, in broker order."""
        ...

    def unroutable_topic(self) -> str | None:
        """A topic the broker refuses (a PERMANENT outcome), or None if it cannot."""
        ...

    def stop_broker(self) -> None:
        """Make the broker unreachable (kill or stop it)."""
        ...

    def start_broker(self) -> None:
        """Bring the broker back after stop_broker() and wait until it answers."""
        ...

    def pause_broker(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        ...

    def resume_broker(self) -> None:
        """Undo pause_broker() (SIGCONT)."""
        ...
