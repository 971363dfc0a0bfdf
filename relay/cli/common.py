"""Option types and the connection contract the command groups share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import psycopg
import typer

DsnOption = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar="OUTBOX_RELAY_DSN",
        show_default=False,
        help="PostgreSQL connection string (URL or key=value).",
    ),
]
SchemaOption = Annotated[
    str,
    typer.Option("--schema", envvar="OUTBOX_RELAY_SCHEMA", help="Schema that holds the outbox."),
]
DsnFileOption = Annotated[
    str | None,
    typer.Option(
        "--dsn-file",
        envvar="OUTBOX_RELAY_DSN_FILE",
        show_default=False,
        help="Read the connection string from this file (a mounted secret) instead of --dsn.",
    ),
]

# (--dsn, --dsn-file) -> an autocommit connection; the root command supplies it, so its
# password joins the secrets scrubbed from every line the command prints.
Connect = Callable[[str, str | None], psycopg.Connection[Any]]
