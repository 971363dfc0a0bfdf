"""One error tree for the whole relay.

Driver errors (psycopg, librdkafka, pika) are translated into this tree once, at the
boundary where they are caught, with ``raise ... from exc``. Whether an error is worth
retrying is decided from SQLSTATE classes or client error codes, never from message text.
"""

from __future__ import annotations

import psycopg


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""


class RetryableError(RelayError):
    """A transient failure: the same operation may succeed later."""


class PermanentError(RelayError):
    """A failure that retrying will not fix without a change by a person."""


class ConfigError(PermanentError):
    """The configuration or command-line input is wrong."""


class SchemaMissingError(PermanentError):
    """The outbox schema is absent or older than this relay needs."""


class DatabaseUnavailableError(RetryableError):
    """PostgreSQL could not be reached or dropped the connection."""


class BrokerUnavailableError(RetryableError):
    """The message broker could not be reached."""


class LeaseLostError(RetryableError):
    """This relay no longer owns the work it was about to publish."""


# SQLSTATE classes (first two characters) that describe a passing condition.
# 08 connection exception, 40 transaction rollback (serialization, deadlock),
# 53 insufficient resources, 55 object not in prerequisite state (lock not available),
# 57 operator intervention (admin shutdown, query canceled), 58 system error (I/O).
_RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


def is_retryable_sqlstate(sqlstate: str | None) -> bool:
    """True when a PostgreSQL error class is worth retrying."""
    if sqlstate is None:
        # No SQLSTATE means the client lost the server before it could answer.
        return True
    return sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES


def translate_db_error(exc: psycopg.Error, doing: str) -> RelayError:
    """Map a psycopg error to the relay's tree; ``doing`` names the failed step."""
    lines = str(exc).strip().splitlines()
    text = exc.diag.message_primary or (lines[0] if lines else type(exc).__name__)
    message = f"{doing}: {text}"
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return DatabaseUnavailableError(message)
    if is_retryable_sqlstate(exc.sqlstate):
        return RetryableError(message)
    return PermanentError(message)
