"""Publish a run of captured events until each is delivered or set aside, in order.

An outage (the broker confirmed nothing and answered nothing) stops the run at its first
failed message: after a backoff the rest of the run, from there on, is published again
in order, and no attempt is counted. Any other failure is polling mode's: the failed
message, and every later message of its key, is set aside in the outbox table with an
attempt, a key hold or a dead letter (``relay.cdc.aside``), and the run goes on.
Progress is reported as a prefix length, so nothing is acknowledged past a message that
is neither confirmed by the broker nor written to the table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from relay.backoff import full_jitter
from relay.breaker import broker_outage
from relay.cdc.outgoing import Item, Unmappable
from relay.connector import Connector
from relay.errors import LeaseLostError, RelayError, RetryableError
from relay.model import DELIVERED, OutboxMessage, Outcome, OutcomeKind, retryable
from relay.outbox_rows import Acknowledgement, FailurePolicy, plan_acknowledgement
from relay.tasks import wait_any

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 500
UNMAPPABLE_TOPIC = "outbox-relay.unmappable"


@dataclass
class CdcStats:
    published: int = 0
    parked: int = 0  # events that could not become messages
    set_aside: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0


class Parker(Protocol):
    async def park_unmappable(self, items: Sequence[Unmappable]) -> None:
        """Record events that could not become messages, with their raw content."""


class SetAside(Protocol):
    """Where the stream leaves what it could not deliver (``relay.cdc.aside.AsideStore``)."""

    turn: asyncio.Lock
    policy: FailurePolicy

    def holding(self) -> bool:
        """Does any key wait (usually not: then no message needs looking at)?"""

    def holds(self, key: str | None) -> bool:
        """Must this key's messages wait in the table?"""

    async def settle(self, messages: Sequence[OutboxMessage], ack: Acknowledgement) -> None:
        """Set ``messages`` aside in order and write ``ack`` (positions index them)."""


@dataclass
class RunStep:
    """The outcome of publishing a run once: ``done`` messages from the front are
    delivered or go to the table (``aside``, with ``ack`` written for them)."""

    done: int
    delivered: int
    aside: list[OutboxMessage] = field(default_factory=list)
    ack: Acknowledgement = field(default_factory=Acknowledgement)


def plan_run(
    messages: Sequence[OutboxMessage], outcomes: Sequence[Outcome | None], policy: FailurePolicy
) -> RunStep:
    """Decide a published run: ``outcomes[i]`` is None for a message that was not sent
    (its key is held). In an outage only the front up to the first RETRYABLE message is
    decided; otherwise all of it. Every decided message that was not delivered is set
    aside, and ``plan_acknowledgement`` (polling mode) says what that costs it."""
    if outcomes.count(DELIVERED) == len(outcomes):  # the usual run: no loop in Python
        return RunStep(len(messages), len(messages))
    sent = [o for o in outcomes if o is not None]
    done = len(messages)
    if broker_outage(sent):
        done = next(i for i, o in enumerate(outcomes) if o and o.kind is OutcomeKind.RETRYABLE)
    aside: list[OutboxMessage] = []
    planned: list[OutboxMessage] = []
    planned_outcomes: list[Outcome] = []
    for message, outcome in zip(messages[:done], outcomes[:done], strict=True):
        position = -1  # delivered: nothing to write for it
        if outcome is None or not outcome.delivered:
            position = len(aside)
            aside.append(message)
        if outcome is not None:
            planned.append(replace(message, position=position))
            planned_outcomes.append(outcome)
    ack = plan_acknowledgement(planned, planned_outcomes, policy)
    return RunStep(done, len(ack.sent), aside, ack)


class BatchPublisher:
    def __init__(
        self,
        connector: Connector,
        parker: Parker,
        aside: SetAside,
        *,
        timeout: float,
        may_publish: Callable[[], bool],
        stats: CdcStats | None = None,
    ) -> None:
        self._connector = connector
        self._parker = parker
        self._aside = aside
        self._timeout = timeout
        self._may_publish = may_publish
        self.stats = stats or CdcStats()

    async def deliver(
        self,
        items: Sequence[Item],
        stopping: asyncio.Event,
        acknowledge: Callable[[int], None],
    ) -> bool:
        """Deliver or set aside every item; ``acknowledge(n)`` reports the first ``n`` done.

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
        """Publish ``messages`` (a held key's wait in the table instead); return how many
        from the front are done."""
        if not self._may_publish():
            raise LeaseLostError("this relay's CDC lease may have run out; not publishing")
        aside = self._aside
        async with aside.turn:  # not while set-aside rows of a key are being published
            if aside.holding():
                waits = [aside.holds(m.key) for m in messages]
                sending = [m for m, w in zip(messages, waits, strict=True) if not w]
                sent = iter(await self.publish(sending))
                outcomes: list[Outcome | None] = [None if w else next(sent) for w in waits]
            else:
                outcomes = list(await self.publish(messages))
            step = plan_run(messages, outcomes, aside.policy)
            if step.aside:
                self._log(step)
                await aside.settle(step.aside, step.ack)
        self.stats.published += step.delivered
        self.stats.set_aside += len(step.aside) - len(step.ack.dead_seqs)
        self.stats.dead_lettered += len(step.ack.dead_seqs)
        if step.done < len(messages):
            self.stats.retries += 1
            log.warning("the broker confirmed none of %d messages (%s); publishing again "
                        "from message %s on", len(messages) - step.done,
                        _first_error(outcomes[step.done:]), messages[step.done].id)  # fmt: skip
        return step.done

    async def publish(self, messages: Sequence[OutboxMessage]) -> list[Outcome]:
        """The connector's outcomes for ``messages``, one each (a raised RetryableError
        fails all of them, unanswered)."""
        if not messages:
            return []
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

    def _log(self, step: RunStep) -> None:
        ack = step.ack
        for error, reason in zip(ack.dead_errors, ack.dead_reasons, strict=True):
            log.error("a message moved to the dead letters (%s: %s)", reason, error)
        if ack.failed_seqs:
            log.warning("%d message(s) not delivered (%s); set aside to be retried, their "
                        "keys wait", len(ack.failed_seqs), ack.failed_errors[0])  # fmt: skip

    async def _back_off(self, attempt: int, stopping: asyncio.Event) -> bool:
        policy = self._aside.policy
        delay = full_jitter(attempt, base=policy.retry_base, cap=policy.retry_cap)
        await wait_any(stopping, timeout=delay)
        return not stopping.is_set()


def _first_error(outcomes: Sequence[Outcome | None]) -> str:
    return next((o.error or o.kind.value for o in outcomes if o and not o.delivered), "?")


Execute = Callable[[Any, dict[str, Any]], Awaitable[int]]


class OutboxParker:
    """Parks into ``<schema>.messages`` through ``execute`` (the leader connection)."""

    def __init__(self, execute: Execute, park_query: Any) -> None:
        self._execute = execute
        self._query = park_query

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
