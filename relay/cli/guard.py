"""The guard every ``outbox-relay`` command runs under.

A command reads its DSNs here, so their passwords join the secrets it scrubs; connects
here, so a refused connection reads as a sentence; and fails here, as one scrubbed line
on stderr with an exit code a supervisor can act on (2: fix the configuration).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import typer

from relay import config as defaults
from relay.db import connection_failure
from relay.dsn import check_dsn, secrets_in
from relay.errors import ConfigError, RelayError, translate_db_error
from relay.outboxes import split_dsns
from relay.secrets import read_secret_file, redact, value_or_file

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
# The secrets of the command running now; every line it prints is scrubbed of them.
known_secrets: list[str] = []


def dsns_from(dsns: list[str], dsn_file: str | None) -> list[str]:
    """The DSNs of --dsn, or those of --dsn-file (one per line; not both); their
    passwords are scrubbed from output."""
    if dsn_file:
        if dsns:
            raise ConfigError("give either --dsn or --dsn-file, not both")
        dsns = split_dsns(read_secret_file(dsn_file, "DSN", "--dsn-file"))
    for dsn in dsns:
        known_secrets.extend(secrets_in(dsn))
    for dsn in dsns:
        check_dsn(dsn)
    return dsns


def dsn_from(dsn: str, dsn_file: str | None) -> str:
    """--dsn or the content of --dsn-file (not both); its password is scrubbed from output."""
    chosen = value_or_file(dsn, dsn_file, what="DSN", flag="--dsn", file_flag="--dsn-file")
    known_secrets.extend(secrets_in(chosen or ""))
    if chosen and chosen.strip():
        check_dsn(chosen)
    return chosen or ""


def scrub(text: str) -> str:
    """``text`` without the running command's secrets."""
    return redact(text, known_secrets)


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print ``message``, scrubbed, as the command's one error line and exit with ``code``."""
    typer.echo(f"outbox-relay: error: {scrub(message)}", err=True)
    raise typer.Exit(code)


def _texts(values: Any) -> list[str]:
    """Every string among the command's arguments, those in lists (--dsn) too."""
    found: list[str] = []
    for value in values:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(item for item in value if isinstance(item, str))
    return found


def clear_errors(command: F) -> F:
    """Turn every failure into one scrubbed line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        known_secrets[:] = secrets_in(*_texts(kwargs.values()))
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except RelayError as exc:
            fail(str(exc))
        except psycopg.Error as exc:  # connect failures were translated in connect already
            fail(str(translate_db_error(exc, "PostgreSQL refused the command")))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            log.debug("internal error", exc_info=True)
            fail(f"internal error ({type(exc).__name__}): {exc}", EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


def connect_either(dsn: str, dsn_file: str | None) -> psycopg.Connection[Any]:
    """Connect with --dsn or --dsn-file (the sub-command groups' ``Connect``)."""
    return connect(dsn_from(dsn, dsn_file))


def connect(dsn: str, timeout: float = defaults.DEFAULT_CONNECT_TIMEOUT) -> psycopg.Connection[Any]:
    """An autocommit connection; a refusal becomes a ``RelayError`` that names the cause."""
    if not dsn.strip():
        raise ConfigError("the database DSN is empty; pass --dsn or set OUTBOX_RELAY_DSN")
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, round(timeout)))
    except psycopg.Error as exc:
        raise connection_failure(dsn, exc) from None
