"""Turning claimed outbox rows into messages, and broker outcomes into acknowledgements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from relay.backoff import full_jitter
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


@dataclass
class Acknowledgement:
    """The database writes that follow one published batch."""

    sent: list[int] = field(default_factory=list)
    released_keys: list[str] = field(default_factory=list)
    failed_seqs: list[int] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    failed_delays: list[float] = field(default_factory=list)
    failed_parks: list[bool] = field(default_factory=list)
    hold_keys: list[str] = field(default_factory=list)
    hold_index: list[int] = field(default_factory=list)

    def hold_params(self) -> dict[str, list[Any]]:
        pick = self.hold_index
        return {
            "keys": self.hold_keys,
            "seqs": [self.failed_seqs[i] for i in pick],
            "errors": [self.failed_errors[i] for i in pick],
            "delays": [self.failed_delays[i] for i in pick],
            "parks": [self.failed_parks[i] for i in pick],
        }

    def failure_params(self) -> dict[str, list[Any]]:
        return {
            "seqs": self.failed_seqs,
            "errors": self.failed_errors,
            "delays": self.failed_delays,
            "parks": self.failed_parks,
        }


def plan_acknowledgement(
    rows: Sequence[ClaimedRow], outcomes: Sequence[Outcome], *, retry_base: float, retry_cap: float
) -> Acknowledgement:
    """Decide what to write: delivered rows are sent; a failed row is retried later (or
    parked when the failure is permanent) and holds its key so later rows of the key wait."""
    if len(outcomes) != len(rows):
        raise ValueError(f"connector returned {len(outcomes)} outcomes for {len(rows)} messages")
    ack = Acknowledgement()
    held: set[str] = set()
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome.kind is OutcomeKind.DELIVERED:
            ack.sent.append(row.seq)
            if row.attempts and row.key is not None:
                ack.released_keys.append(row.key)
            continue
        park = outcome.kind is OutcomeKind.PERMANENT
        delay = full_jitter(row.attempts, base=retry_base, cap=retry_cap)
        ack.failed_seqs.append(row.seq)
        ack.failed_errors.append((outcome.error or outcome.kind.value)[:MAX_ERROR_LENGTH])
        ack.failed_delays.append(delay)
        ack.failed_parks.append(park)
        if row.key is not None and row.key not in held:
            held.add(row.key)
            ack.hold_keys.append(row.key)
            ack.hold_index.append(len(ack.failed_seqs) - 1)
    return ack
