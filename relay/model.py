"""The values that travel from the outbox to a connector and back."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


@dataclass(slots=True)
class OutboxMessage:
    """One event taken from the outbox, ready to publish. Treat it as read-only.

    (Not ``frozen``: a frozen dataclass's ``__init__`` goes through ``object.__setattr__``
    per field, a noticeable share of the relay's CPU per message; benchmarks/README.md.)

    ``payload`` is the exact bytes to put on the wire (the UTF-8 text of a JSON payload
    as stored, the stored bytes for binary ones, ``None`` for a tombstone).
    ``position`` orders messages within the source (the outbox sequence number in
    polling mode, the commit LSN in CDC mode). ``committed_at`` is when the writing
    transaction committed, where the source says so (CDC: the commit timestamp that
    pgoutput sends with BEGIN); polling knows only ``created_at``, the transaction's start.
    ``timestamp`` is the event's own time, for the record's timestamp, where the source
    names one (a Debezium table: the row's time column, else the commit time); None
    leaves it to the connector (Kafka: the producer's clock; RabbitMQ: ``created_at``).
    """

    id: UUID
    topic: str
    key: str | None
    payload: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    position: int = 0
    created_at: datetime | None = None
    attempts: int = 0
    committed_at: datetime | None = None
    timestamp: datetime | None = None


class OutcomeKind(enum.Enum):
    DELIVERED = "delivered"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the broker said about one message of a batch."""

    kind: OutcomeKind
    error: str | None = None
    # True when the broker itself answered (a nack, a broker error code): it is up, and
    # the failure is this message's. False for timeouts and lost connections, which say
    # nothing about the message; a batch with only those is an outage, not an attempt.
    answered: bool = False

    @property
    def delivered(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED


DELIVERED = Outcome(OutcomeKind.DELIVERED)


def retryable(error: str, *, answered: bool = False) -> Outcome:
    return Outcome(OutcomeKind.RETRYABLE, error, answered)


def permanent(error: str) -> Outcome:
    return Outcome(OutcomeKind.PERMANENT, error)
