"""Refuse oversized messages before they reach the broker.

A broker refuses a record over its limit only after the bytes crossed the network (Kafka:
MSG_SIZE_TOO_LARGE; RabbitMQ closes the channel over ``max_message_size``, taking the
rest of the batch with it). ``SizeLimitedConnector`` wraps any connector and answers
PERMANENT for such messages itself, so they are parked with a clear reason and the
broker never sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.connector import Connector
from relay.decorators import ConnectorWrapper
from relay.model import OutboxMessage, Outcome, permanent
from relay.refusals import BatchRefusals


def message_size(message: OutboxMessage) -> int:
    """Bytes of the payload, key, topic and headers (names and values), UTF-8 encoded.

    An upper bound on what the message costs on any broker, before framing overhead.
    """
    size = len(message.payload or b"") + len(message.topic.encode())
    if message.key is not None:
        size += len(message.key.encode())
    for name, value in message.headers.items():
        size += len(str(name).encode()) + len(str(value).encode())
    return size


def _surely_within(message: OutboxMessage, max_bytes: int) -> bool:
    """A cheap test that passes almost every message without encoding its strings: a
    character is at most 4 bytes in UTF-8."""
    if message.headers:
        return False
    chars = len(message.topic) + (len(message.key) if message.key is not None else 0)
    return len(message.payload or b"") + 4 * chars <= max_bytes


def _all_surely_within(batch: Sequence[OutboxMessage], max_bytes: int) -> bool:
    """``_surely_within`` for a whole batch in one expression, without a call per message
    (a message with headers counts as over, so that it gets the exact measure)."""
    over = max_bytes + 1
    bounds = [
        over if m.headers else len(m.payload or b"") + 4 * (len(m.topic) + len(m.key or ""))
        for m in batch
    ]
    return not bounds or max(bounds) <= max_bytes


class SizeLimitedConnector(ConnectorWrapper):
    """A connector that refuses messages over ``max_bytes`` and passes the rest on.

    Outcomes keep batch order. A later message of an oversized message's key is not
    published either (``relay.refusals``): it would overtake the parked one.
    """

    def __init__(self, inner: Connector, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        super().__init__(inner)
        self.max_bytes = max_bytes

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        """Publish the messages within the limit; one outcome per message, in order."""
        if _all_surely_within(batch, self.max_bytes):
            return await self.inner.publish(batch, timeout=timeout)
        refusals = BatchRefusals(batch)
        for index, message in refusals.sendable():
            if _surely_within(message, self.max_bytes):
                continue
            size = message_size(message)
            if size > self.max_bytes:
                refusals.refuse(
                    index,
                    permanent(
                        f"message is {size} bytes, over the limit of {self.max_bytes} "
                        "(--max-message-bytes)"
                    ),
                )
        passed = refusals.unsettled()
        return refusals.merge(await self.inner.publish(passed, timeout=timeout) if passed else [])


def limit_message_size(connector: Connector, max_bytes: int) -> Connector:
    """``connector`` wrapped in a size check (once: wrapping twice changes nothing)."""
    if isinstance(connector, SizeLimitedConnector) and connector.max_bytes == max_bytes:
        return connector
    return SizeLimitedConnector(connector, max_bytes)
