"""Turning claimed outbox rows into messages, and broker outcomes into acknowledgements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from relay.backoff import full_jitter
from relay.breaker import broker_outage
from relay.model import OutboxMessage, Outcome, OutcomeKind

MAX_ERROR_LENGTH = 500


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    seq: int
    id: UUID
    topic: str
    key: str | None
    payload: Any
    payload_bytes: bytes | None
    content_type: str
    headers: Mapping[str, Any]
    created_at: datetime
    attempts: int


def header_text(value: Any) -> str:
    """Headers are strings on the wire; other JSON values travel as their JSON text."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def to_message(row: ClaimedRow) -> OutboxMessage:
    if row.payload_bytes is not None:
        payload: bytes | None = bytes(row.payload_bytes)
    elif row.payload is not None:
        payload = orjson.dumps(row.payload)  # compact UTF-8 JSON
    else:
        payload = None
    return OutboxMessage(
        id=row.id,
        topic=row.topic,
        key=row.key,
        payload=payload,
        headers={k: header_text(v) for k, v in row.headers.items()},
        content_type=row.content_type,
        position=row.seq,
        created_at=row.created_at,
        attempts=row.attempts,
    )


@dataclass(frozen=True)
class FailurePolicy:
    """What a failure costs: retry delays, the attempt budget, and what a dead letter
    does to the rest of its key (``block``: they wait; ``skip``: they pass)."""

    retry_base: float
    retry_cap: float
    max_attempts: int = 20
    on_poison: str = "block"


@dataclass
class Acknowledgement:
    """The database writes that follow one published batch.

    ``outage``: the broker confirmed nothing; its RETRYABLE messages are left untouched
    (no attempt counted, no hold), as if the batch had never been claimed.
    """

    outage: bool = False
    sent: list[int] = field(default_factory=list)
    released_keys: list[str] = field(default_factory=list)
    failed_seqs: list[int] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    failed_delays: list[float] = field(default_factory=list)
    dead_seqs: list[int] = field(default_factory=list)
    dead_errors: list[str] = field(default_factory=list)
    dead_reasons: list[str] = field(default_factory=list)
    hold_keys: list[str] = field(default_factory=list)
    hold_seqs: list[int] = field(default_factory=list)
    hold_errors: list[str] = field(default_factory=list)
    hold_delays: list[float] = field(default_factory=list)
    hold_forever: list[bool] = field(default_factory=list)
    waiting: int = 0  # failed behind an earlier failure of their key: not an attempt

    def hold_params(self) -> dict[str, list[Any]]:
        return {
            "keys": self.hold_keys,
            "seqs": self.hold_seqs,
            "errors": self.hold_errors,
            "delays": self.hold_delays,
            "parks": self.hold_forever,
        }

    def failure_params(self) -> dict[str, list[Any]]:
        return {
            "seqs": self.failed_seqs,
            "errors": self.failed_errors,
            "delays": self.failed_delays,
        }

    def dead_letter_params(self) -> dict[str, list[Any]]:
        return {"seqs": self.dead_seqs, "errors": self.dead_errors, "reasons": self.dead_reasons}

    def hold(self, key: str, seq: int, error: str, delay: float, forever: bool) -> None:
        self.hold_keys.append(key)
        self.hold_seqs.append(seq)
        self.hold_errors.append(error)
        self.hold_delays.append(delay)
        self.hold_forever.append(forever)


def plan_acknowledgement(
    rows: Sequence[ClaimedRow], outcomes: Sequence[Outcome], policy: FailurePolicy
) -> Acknowledgement:
    """Decide what to write after a batch.

    Delivered rows are sent. The first failed row of a key counts an attempt: it is
    retried later and holds its key, or moves to the dead letters (a PERMANENT outcome,
    or its last attempt) where, with ``block``, its key stays held. Later failed rows of
    the same key only wait behind it. When the broker confirmed nothing (an outage),
    RETRYABLE rows are not written at all.
    """
    if len(outcomes) != len(rows):
        raise ValueError(f"connector returned {len(outcomes)} outcomes for {len(rows)} messages")
    ack = Acknowledgement(outage=broker_outage(outcomes))
    failed_keys: set[str] = set()
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome.kind is OutcomeKind.DELIVERED:
            ack.sent.append(row.seq)
            if row.attempts and row.key is not None:
                ack.released_keys.append(row.key)
            continue
        if row.key is not None:
            if row.key in failed_keys:
                ack.waiting += 1
                continue
            failed_keys.add(row.key)
        if outcome.kind is OutcomeKind.RETRYABLE and ack.outage:
            continue
        _plan_failure(ack, row, outcome, policy)
    return ack


def _plan_failure(
    ack: Acknowledgement, row: ClaimedRow, outcome: Outcome, policy: FailurePolicy
) -> None:
    error = (outcome.error or outcome.kind.value)[:MAX_ERROR_LENGTH]
    permanent = outcome.kind is OutcomeKind.PERMANENT
    if permanent or row.attempts + 1 >= policy.max_attempts:
        ack.dead_seqs.append(row.seq)
        ack.dead_errors.append(error)
        ack.dead_reasons.append("permanent" if permanent else "max_attempts")
        if row.key is None:
            return
        if policy.on_poison == "block":
            ack.hold(row.key, row.seq, error, 0.0, forever=True)
        else:
            ack.released_keys.append(row.key)
        return
    delay = full_jitter(row.attempts, base=policy.retry_base, cap=policy.retry_cap)
    ack.failed_seqs.append(row.seq)
    ack.failed_errors.append(error)
    ack.failed_delays.append(delay)
    if row.key is not None:
        ack.hold(row.key, row.seq, error, delay, forever=False)
