"""The broker harnesses of this repository's tests: the conformance suite's harness
(relay/testing/conformance.py), plus what the relay's own tests need."""

from __future__ import annotations

from typing import Protocol

from relay.config import RelayConfig
from relay.testing.conformance import ConformanceHarness, Received

__all__ = ["BrokerHarness", "Received"]


class BrokerHarness(ConformanceHarness, Protocol):
    connector_name: str

    def configure(self, base: RelayConfig) -> RelayConfig:
        """Return ``base`` with this broker's connection settings filled in."""
        ...
