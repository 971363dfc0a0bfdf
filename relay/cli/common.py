"""Option types and the connection contract the command groups share."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import psycopg
import typer

DsnOption = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar="OUTBOX_RELAY_DSN",
        metavar="DSN",
        show_default=False,
        help="PostgreSQL connection string (URL or key=value).",
    ),
]
SchemaOption = Annotated[
    str,
    typer.Option(
        "--schema",
        envvar="OUTBOX_RELAY_SCHEMA",
        metavar="NAME",
        help="Schema that holds the outbox.",
    ),
]
DsnFileOption = Annotated[
    str | None,
    typer.Option(
        "--dsn-file",
        envvar="OUTBOX_RELAY_DSN_FILE",
        metavar="FILE",
        show_default=False,
        help="Read the connection string from this file (a mounted secret) instead of --dsn.",
    ),
]

# (--dsn, --dsn-file) -> an autocommit connection; the root command supplies it, so its
# password joins the secrets scrubbed from every line the command prints.
Connect = Callable[[str, str | None], psycopg.Connection[Any]]


def relay_version() -> str:
    """The installed outbox-relay's version (``unknown`` when run from a bare checkout)."""
    try:
        return version("outbox-relay")
    except PackageNotFoundError:
        return "unknown"


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"outbox-relay {relay_version()}")
        raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
]


def env_var(name: str) -> str:
    """The ``OUTBOX_RELAY_*`` variable that also sets the flag ``name`` stands for."""
    return f"OUTBOX_RELAY_{name}"
