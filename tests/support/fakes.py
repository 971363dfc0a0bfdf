"""An in-memory connector for the relay's own tests and benchmarks (test code only).

It records what was published and can be told to fail: per message (by predicate), or
as a whole broker outage. It honours the connector protocol exactly, so the relay's
core can be tested without a broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

from relay.config import RelayConfig
from relay.connector_settings import ConnectorSettings
from relay.model import DELIVERED, OutboxMessage, Outcome, permanent, retryable

Rule = Callable[[OutboxMessage], Outcome | None]


class MemorySettings(ConnectorSettings):
    """The in-memory connector takes no options."""

    connector_name: ClassVar[str] = "memory"


@dataclass
class InMemoryConnector:
    """Delivers into ``self.published``; ``rules`` may turn a message into a failure.

    Within one batch, once a message of a key fails, the later messages of that key fail
    too, the way an ordered broker client (Kafka's idempotent producer) behaves.
    """

    name: str = "memory"
    published: list[OutboxMessage] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    down: bool = False
    delay: float = 0.0
    opened: bool = False
    batches: int = 0

    settings = MemorySettings

    @classmethod
    def from_config(
        cls, config: RelayConfig, settings: MemorySettings | None = None
    ) -> InMemoryConnector:
        return cls()

    async def open(self) -> None:
        self.opened = True

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        self.batches += 1
        if self.delay:
            await asyncio.sleep(min(self.delay, timeout))
        if self.down:
            return [retryable("broker unavailable (in-memory outage)")] * len(batch)
        failed_keys: set[str] = set()
        outcomes = []
        for message in batch:
            if message.key is not None and message.key in failed_keys:
                # Like an ordered broker client: nothing of a key passes a failed message.
                outcomes.append(retryable("behind a failed message of the same key"))
                continue
            outcome = self._deliver(message)
            if not outcome.delivered and message.key is not None:
                failed_keys.add(message.key)
            outcomes.append(outcome)
        return outcomes

    def _deliver(self, message: OutboxMessage) -> Outcome:
        for rule in self.rules:
            outcome = rule(message)
            if outcome is not None:
                # a rule is this broker's answer about one message (``down`` is the outage)
                return replace(outcome, answered=True)
        self.published.append(message)
        return DELIVERED

    async def close(self, *, timeout: float) -> None:
        self.opened = False

    def fail_topic(self, topic: str, *, permanently: bool = False) -> None:
        """Make every message of ``topic`` fail from now on."""

        def rule(message: OutboxMessage) -> Outcome | None:
            if message.topic != topic:
                return None
            error = f"topic {topic} refused"
            return permanent(error) if permanently else retryable(error)

        self.rules.append(rule)
