"""Publish a run of captured events until each is delivered or parked, in order.

A RETRYABLE outcome stops the run there: after a backoff the rest of the run, from the
first failure on, is published again in order (what followed it may arrive twice; it
never arrives first). A PERMANENT outcome parks the message as a row of the outbox table
and the run goes on. Progress is reported as a prefix length, so nothing is acknowledged
past a message the broker has not confirmed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from relay.backoff import full_jitter
from relay.cdc.outgoing import Item, Unmappable
from relay.connector import Connector
from relay.errors import LeaseLostError, RelayError, RetryableError
from relay.model import OutboxMessage, Outcome, OutcomeKind, retryable
from relay.tasks import wait_any

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 500
UNMAPPABLE_TOPIC = "outbox-relay.unmappable"


@dataclass
class CdcStats:
    published: int = 0
    parked: int = 0
    batches: int = 0
    retries: int = 0


class Parker(Protocol):
    async def park(self, failures: Sequence[tuple[OutboxMessage, str]]) -> None:
        """Record each message as a parked outbox row with its error."""

    async def park_unmappable(self, items: Sequence[Unmappable]) -> None:
        """Record events that could not become messages, with their raw content."""


class BatchPublisher:
    def __init__(
        self,
        connector: Connector,
        parker: Parker,
        *,
        timeout: float,
        retry_base: float,
        retry_cap: float,
        may_publish: Callable[[], bool],
        stats: CdcStats | None = None,
    ) -> None:
        self._connector = connector
        self._parker = parker
        self._timeout = timeout
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._may_publish = may_publish
        self.stats = stats or CdcStats()

    async def deliver(
        self,
        items: Sequence[Item],
        stopping: asyncio.Event,
        acknowledge: Callable[[int], None],
    ) -> bool:
        """Deliver or park every item; ``acknowledge(n)`` reports the first ``n`` done.

        Returns False when ``stopping`` interrupted a retry (the rest stays unacknowledged).
        """
        unmappable = [item for item in items if isinstance(item, Unmappable)]
        if unmappable:
            await self._parker.park_unmappable(unmappable)
            self.stats.parked += len(unmappable)
        messages = [item for item in items if isinstance(item, OutboxMessage)]
        # where the prefix of items ends once k messages are done
        ends = [i for i, item in enumerate(items) if isinstance(item, OutboxMessage)]
        ends.append(len(items))
        done = attempt = 0
        self.stats.batches += 1
        while done < len(messages):
            done += await self._publish_once(messages[done:])
            acknowledge(ends[done])
            if done < len(messages):
                if not await self._back_off(attempt, stopping):
                    return False
                attempt += 1
        if not messages:
            acknowledge(len(items))
        return True

    async def _publish_once(self, messages: Sequence[OutboxMessage]) -> int:
        """Publish ``messages``; park refused ones; return how many are done in a row."""
        if not self._may_publish():
            raise LeaseLostError("this relay's CDC lease may have run out; not publishing")
        outcomes = await self._publish(messages)
        done, refused = 0, []
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome.kind is OutcomeKind.RETRYABLE:
                log.warning("message %s not delivered (%s); retrying from it on",
                            message.id, outcome.error)
                self.stats.retries += 1
                break
            if outcome.kind is OutcomeKind.PERMANENT:
                refused.append((message, (outcome.error or "refused")[:MAX_ERROR_LENGTH]))
            done += 1
        if refused:
            for message, error in refused:
                log.error("message %s refused by the broker for good (%s); parking it",
                          message.id, error)
            await self._parker.park(refused)
            self.stats.parked += len(refused)
        self.stats.published += done - len(refused)
        return done

    async def _publish(self, messages: Sequence[OutboxMessage]) -> list[Outcome]:
        try:
            outcomes = await self._connector.publish(messages, timeout=self._timeout)
        except RetryableError as exc:
            return [retryable(str(exc))] * len(messages)
        if len(outcomes) != len(messages):
            raise RelayError(
                f"connector {self._connector.name} returned {len(outcomes)} outcomes "
                f"for {len(messages)} messages"
            )
        return outcomes

    async def _back_off(self, attempt: int, stopping: asyncio.Event) -> bool:
        delay = full_jitter(attempt, base=self._retry_base, cap=self._retry_cap)
        await wait_any(stopping, timeout=delay)
        return not stopping.is_set()


Execute = Callable[[Any, dict[str, Any]], Awaitable[int]]


class OutboxParker:
    """Parks into ``<schema>.messages`` through ``execute`` (the leader connection)."""

    def __init__(self, execute: Execute, park_query: Any) -> None:
        self._execute = execute
        self._query = park_query

    async def park(self, failures: Sequence[tuple[OutboxMessage, str]]) -> None:
        await self._execute(self._query, park_params(failures))

    async def park_unmappable(self, items: Sequence[Unmappable]) -> None:
        failures = [
            (OutboxMessage(id=item.id, topic=UNMAPPABLE_TOPIC, key=item.key, payload=item.raw,
                           content_type="application/octet-stream", position=item.position),
             item.error[:MAX_ERROR_LENGTH])
            for item in items
        ]
        await self._execute(self._query, park_params(failures))


def park_params(failures: Sequence[tuple[OutboxMessage, str]]) -> dict[str, Any]:
    columns: dict[str, list[Any]] = {
        name: [] for name in ("ids", "topics", "keys", "payloads", "payload_bytes",
                              "content_types", "headers", "errors")
    }
    for message, error in failures:
        is_json = message.content_type == "application/json" and message.payload is not None
        columns["ids"].append(message.id)
        columns["topics"].append(message.topic[:249])
        columns["keys"].append(message.key)
        columns["payloads"].append(message.payload.decode() if is_json and message.payload
                                   else None)
        columns["payload_bytes"].append(None if is_json else message.payload)
        columns["content_types"].append(message.content_type)
        columns["headers"].append(orjson.dumps(dict(message.headers)).decode())
        columns["errors"].append(error)
    return columns
