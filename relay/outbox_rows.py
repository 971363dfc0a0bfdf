"""The outbox table's rows, as both sources use them: claimed rows turned into messages,
broker outcomes into acknowledgements, and those written back (sent, failed, held, dead
letters) with polling mode's rules. The CDC source publishes what it set aside from the
table this way too."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format
from psycopg.types.string import ByteaBinaryLoader

from relay.backoff import full_jitter
from relay.breaker import broker_outage
from relay.db import DbSession
from relay.model import DELIVERED, OutboxMessage, Outcome, OutcomeKind
from relay.sqlfiles import query

MAX_ERROR_LENGTH = 500
# Retention deletes in chunks, so no purge holds many row locks or runs long.
PURGE_CHUNK = 1000
PURGE_CHUNKS_PER_ROUND = 100


# The columns claim_batch returns, in order; ``message_from_claim`` reads them.
CLAIM_COLUMNS = (
    "seq", "id", "topic", "key", "payload", "payload_bytes", "content_type", "headers",
    "created_at", "attempts",
)  # fmt: skip
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
JSONB_VERSION = 1  # the first byte of jsonb's binary form; the text follows


class JsonbObjectLoader(Loader):
    """jsonb in binary format as Python objects, with orjson (several times faster than
    the json module)."""

    format = Format.BINARY

    def load(self, data: Buffer) -> Any:
        if data[0] != JSONB_VERSION:
            raise psycopg.DataError(f"unknown jsonb binary format version {data[0]}")
        return orjson.loads(data[1:])


def register_claim_loaders(adapters: AdaptersMap) -> None:
    """For a binary claim cursor: the payload (json) as the bytes of its text, exactly as
    the application wrote it, and the headers (jsonb) as an object.

    json's binary form is its text, so psycopg's C loader for bytea hands it over
    without a Python call per row; re-encoding a 1 KB payload through a JSON parser
    would cost more CPU than everything else the relay does per message. Binary rows
    also spare the server printing (and the relay parsing) the timestamp, the UUID and
    the integers (benchmarks/README.md has the measurement)."""
    adapters.register_loader("json", ByteaBinaryLoader)
    adapters.register_loader("jsonb", JsonbObjectLoader)


class JsonbTextObjectLoader(Loader):
    """jsonb in text format as Python objects, with orjson."""

    def load(self, data: Buffer) -> Any:
        return orjson.loads(data)


class JsonTextBytesLoader(Loader):
    """json in text format as the bytes of its text, as the binary claim loads it."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def register_claim_text_loaders(adapters: AdaptersMap) -> None:
    """For a claim in text format (a simple-protocol query): the same values as
    ``register_claim_loaders`` gives a binary claim."""
    adapters.register_loader("json", JsonTextBytesLoader)
    adapters.register_loader("jsonb", JsonbTextObjectLoader)


def header_text(value: Any) -> str:
    """Headers are strings on the wire; other JSON values travel as their JSON text."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def message_from_claim(values: Sequence[Any]) -> OutboxMessage:
    """One claimed row (CLAIM_COLUMNS, loaded in binary as above) as the message to publish."""
    seq, id_, topic, key, payload, payload_bytes, content_type, headers, created, tries = values
    return OutboxMessage(
        id_,
        topic,
        key,
        payload if payload_bytes is None else bytes(payload_bytes),
        {k: header_text(v) for k, v in headers.items()} if headers else NO_HEADERS,
        content_type,
        seq,
        created,
        tries,
    )


def bigint_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers, for ``%s::bigint[]``: far cheaper than
    psycopg adapting a long list element by element."""
    return "{" + ",".join(map(str, values)) + "}"


def message_row(_cursor: Any) -> Callable[[Sequence[Any]], OutboxMessage]:
    """A psycopg row factory: claimed rows straight to messages, with no dict in between."""
    return message_from_claim


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

    @property
    def sent_only(self) -> bool:
        """Nothing to write but the sent rows: every message delivered, and none of them
        a retry whose key hold must be released."""
        return not (self.dead_seqs or self.released_keys or self.failed_seqs or self.hold_keys)

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
    messages: Sequence[OutboxMessage], outcomes: Sequence[Outcome], policy: FailurePolicy
) -> Acknowledgement:
    """Decide what to write after a batch.

    Delivered rows are sent. The first failed message of a key counts an attempt: it is
    retried later and holds its key, or moves to the dead letters (a PERMANENT outcome,
    or its last attempt) where, with ``block``, its key stays held. Later failed rows of
    the same key only wait behind it. When the broker confirmed nothing (an outage),
    RETRYABLE rows are not written at all.
    """
    if len(outcomes) != len(messages):
        raise ValueError(
            f"connector returned {len(outcomes)} outcomes for {len(messages)} messages"
        )
    if outcomes.count(DELIVERED) == len(outcomes):  # the usual batch: no loop in Python
        released = [m.key for m in messages if m.attempts and m.key is not None]
        return Acknowledgement(sent=[m.position for m in messages], released_keys=released)
    ack = Acknowledgement(outage=broker_outage(outcomes))
    failed_keys: set[str] = set()
    for message, outcome in zip(messages, outcomes, strict=True):
        if outcome.kind is OutcomeKind.DELIVERED:
            ack.sent.append(message.position)
            if message.attempts and message.key is not None:
                ack.released_keys.append(message.key)
            continue
        if message.key is not None:
            if message.key in failed_keys:
                ack.waiting += 1
                continue
            failed_keys.add(message.key)
        if outcome.kind is OutcomeKind.RETRYABLE and ack.outage:
            continue
        _plan_failure(ack, message, outcome, policy)
    return ack


def _plan_failure(
    ack: Acknowledgement, message: OutboxMessage, outcome: Outcome, policy: FailurePolicy
) -> None:
    error = (outcome.error or outcome.kind.value)[:MAX_ERROR_LENGTH]
    permanent = outcome.kind is OutcomeKind.PERMANENT
    if permanent or message.attempts + 1 >= policy.max_attempts:
        ack.dead_seqs.append(message.position)
        ack.dead_errors.append(error)
        ack.dead_reasons.append("permanent" if permanent else "max_attempts")
        if message.key is None:
            return
        if policy.on_poison == "block":
            ack.hold(message.key, message.position, error, 0.0, forever=True)
        else:
            ack.released_keys.append(message.key)
        return
    delay = full_jitter(message.attempts, base=policy.retry_base, cap=policy.retry_cap)
    ack.failed_seqs.append(message.position)
    ack.failed_errors.append(error)
    ack.failed_delays.append(delay)
    if message.key is not None:
        ack.hold(message.key, message.position, error, delay, forever=False)


async def write_acknowledgement(
    conn: psycopg.AsyncConnection[Any], schema: str, ack: Acknowledgement, *, retention: float
) -> None:
    """A batch's writes, then COMMIT: sent rows (deleted when nothing is retained), dead
    letters, released keys, failed attempts, key holds."""
    await write_acknowledged_rows(conn, schema, ack, retention=retention)
    await conn.execute("COMMIT")


async def write_acknowledged_rows(
    conn: psycopg.AsyncConnection[Any], schema: str, ack: Acknowledgement, *, retention: float
) -> None:
    """write_acknowledgement without its COMMIT."""
    if ack.sent:
        name = "delete_sent" if retention == 0 else "mark_sent"
        await conn.execute(query(name, schema), {"seqs": bigint_array(ack.sent)}, prepare=True)
    if ack.dead_seqs:
        await conn.execute(query("dead_letter", schema), ack.dead_letter_params())
    if ack.released_keys:
        await conn.execute(query("release_holds", schema), {"keys": ack.released_keys})
    if ack.failed_seqs:
        await conn.execute(query("record_failures", schema), ack.failure_params())
    if ack.hold_keys:
        await conn.execute(query("hold_keys", schema), ack.hold_params())


async def purge_sent(session: DbSession, schema: str, retention: float) -> int:
    """Delete sent rows older than ``retention`` seconds, a chunk at a time."""
    total = 0
    for _ in range(PURGE_CHUNKS_PER_ROUND):
        async with session.turn() as conn:  # a chunk at a time: others may share it
            cursor = await conn.execute(
                query("purge_sent", schema), {"retention": retention, "limit": PURGE_CHUNK}
            )
        total += cursor.rowcount
        if cursor.rowcount < PURGE_CHUNK:
            break
    return total
