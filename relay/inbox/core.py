"""What the sync and asyncio inboxes share: validation, parameters, the SQL, results.

The variants in ``relay.inbox.inbox`` only add the I/O; every decision lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from relay.config import DEFAULT_SCHEMA
from relay.errors import ConfigError, PermanentError, SchemaMissingError
from relay.migrations import get_track
from relay.names import check_schema_name
from relay.sqlfiles import query

INBOX_SQL = "inbox.sql"
# Key columns share one btree entry, limited to about 2,700 bytes: 100 + 500 characters
# stay below it even at four UTF-8 bytes each.
MAX_CONSUMER_LENGTH = 100
MAX_MESSAGE_ID_LENGTH = 500


class MissingMessageIdError(PermanentError):
    """A message carries no usable id, so the inbox cannot tell whether it is a duplicate."""


@dataclass(frozen=True)
class InboxResult:
    """What :meth:`Inbox.process` did with one message.

    ``duplicate``: the id was already recorded for this consumer; the handler did not run.
    ``result``: the handler's return value, or for a duplicate the JSON stored by the first
    processing (``None`` unless the inbox keeps results).
    ``committed``: True when ``process`` opened the transaction and committed it, so the
    record and the handler's writes are durable: acknowledge the broker now. False when it
    ran inside your transaction (a savepoint): acknowledge after you commit.
    """

    duplicate: bool
    result: Any
    message_id: str
    committed: bool


@dataclass
class InboxClaim:
    """The state of one message inside :meth:`Inbox.claim`.

    Check ``duplicate`` first: when it is True the message was processed before and the
    body must not apply it again; ``result`` is then what the first processing kept (only
    for an inbox created with ``keep_results=True``, else None).
    """

    message_id: str
    duplicate: bool
    result: Any = None
    committed: bool = False
    keeps_results: bool = field(default=True, repr=False)
    _result_json: str | None = field(default=None, repr=False)

    def keep_result(self, value: Any) -> None:
        """Store ``value`` (JSON-serializable) with the id, replayed to later duplicates."""
        if not self.keeps_results:
            raise RuntimeError("this inbox keeps no results; create it with keep_results=True")
        if self.duplicate:
            raise RuntimeError(
                f"message {self.message_id!r} was processed before; its first result is kept"
            )
        self._result_json = encode_result(value)
        self.result = value


def encode_result(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        raise TypeError(
            f"the inbox stores the handler's result for later duplicates, so it must be "
            f"JSON-serializable: {exc}"
        ) from exc


def message_key(message_id: object) -> str:
    """The text the inbox records for ``message_id``; raise on ids it cannot record."""
    if message_id is None or message_id == "":
        raise MissingMessageIdError(
            "the message has no id; the inbox needs one to recognize duplicates "
            "(see relay.inbox.adapters for reading it from a Kafka or AMQP message)"
        )
    if isinstance(message_id, UUID):
        return str(message_id)
    if not isinstance(message_id, str):
        raise TypeError(f"a message id is a str or a UUID, not {type(message_id).__name__}")
    if len(message_id) > MAX_MESSAGE_ID_LENGTH or "\x00" in message_id:
        raise ValueError(
            f"the inbox records message ids of up to {MAX_MESSAGE_ID_LENGTH} characters "
            f"without NUL bytes; got {message_id[:40]!r}... ({len(message_id)} characters)"
        )
    return message_id


def opens_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """True when ``conn.transaction()`` will BEGIN/COMMIT rather than use a savepoint."""
    return conn.info.transaction_status == TransactionStatus.IDLE


def schema_missing(schema: str, exc: psycopg.Error) -> SchemaMissingError:
    return SchemaMissingError(
        f"the database has no inbox table {schema}.inbox; "
        f"{get_track('inbox').install_hint} ({exc.diag.message_primary})"
    )


def check_schema(schema: str) -> str:
    return check_schema_name(schema)


def check_consumer(consumer: str) -> str:
    if not isinstance(consumer, str) or not 0 < len(consumer) <= MAX_CONSUMER_LENGTH:
        raise ConfigError(
            f"the consumer name must be 1 to {MAX_CONSUMER_LENGTH} characters, got {consumer!r}"
        )
    return consumer


class InboxSpec:
    """Validated settings and bound statements of one consumer's inbox."""

    def __init__(
        self, *, consumer: str, schema: str = DEFAULT_SCHEMA, keep_results: bool = False
    ) -> None:
        self.consumer = check_consumer(consumer)
        self.schema = check_schema(schema)
        self.keep_results = keep_results
        self.claim_sql: sql.Composed = query("claim_message", schema, INBOX_SQL)
        self.stored_result_sql: sql.Composed = query("stored_result", schema, INBOX_SQL)
        self.store_result_sql: sql.Composed = query("store_result", schema, INBOX_SQL)

    def params(self, key: str) -> dict[str, Any]:
        return {"consumer": self.consumer, "message_id": key}

    def result_params(self, claim: InboxClaim) -> dict[str, Any] | None:
        """Parameters of ``store_result`` when the claim has a result to keep, else None."""
        if claim.duplicate or claim._result_json is None:
            return None
        return {**self.params(claim.message_id), "result": claim._result_json}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(consumer={self.consumer!r}, schema={self.schema!r})"
