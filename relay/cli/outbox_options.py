"""Which outboxes a command works on: ``--dsn`` and ``--schema``, each as often as
needed, and ``--schema-pattern`` (docs/multi-tenant.md).

Given more than once, a flag adds to the list. The environment variables hold lists too:
``OUTBOX_RELAY_SCHEMA`` split at commas and whitespace, ``OUTBOX_RELAY_DSN`` (and a
``--dsn-file``) one DSN per line, or several URLs on a line separated by spaces: a
key=value DSN has spaces of its own and a URL may hold commas between its hosts.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from relay import config as defaults
from relay.outboxes import split_dsns, split_schemas


def dsns_option(help_text: str) -> Any:
    """``--dsn`` as a list, with the help of the command that takes it."""
    return typer.Option(
        "--dsn", envvar="OUTBOX_RELAY_DSN", metavar="DSN", show_default=False, help=help_text
    )


def schema_pattern_option(help_text: str) -> Any:
    """``--schema-pattern``, with the help of the command that takes it."""
    return typer.Option(
        "--schema-pattern",
        envvar="OUTBOX_RELAY_SCHEMA_PATTERN",
        metavar="LIKE",
        show_default=False,
        help=help_text,
    )


DsnsOption = Annotated[
    list[str] | None,
    dsns_option(
        "PostgreSQL connection string (URL or key=value); give it again for each database to drain."
    ),
]
SchemasOption = Annotated[
    list[str] | None,
    typer.Option(
        "--schema",
        envvar="OUTBOX_RELAY_SCHEMA",
        metavar="NAME",
        show_default=False,
        help="Schema that holds the outbox (default outbox); give it again for each "
        "outbox of every database.",
    ),
]
SchemaPatternOption = Annotated[
    str | None,
    schema_pattern_option(
        "Also every schema whose name matches this LIKE pattern ('tenant_%') and "
        "holds an outbox, in each database; looked for again while running."
    ),
]


def _from_environment(ctx: typer.Context, name: str) -> str | None:
    """The raw text of option ``name``'s environment variable, if that is where its
    values came from (click has split it at whitespace already)."""
    source = ctx.get_parameter_source(name)
    if source is None or source.name != "ENVIRONMENT":
        return None
    param = next(p for p in ctx.command.params if p.name == name)
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def listed_dsns(ctx: typer.Context, given: list[str] | None) -> list[str]:
    """The DSNs of ``--dsn`` (or its environment variable), as the user meant them."""
    text = _from_environment(ctx, "dsn")
    if text is not None:
        return split_dsns(text)
    return [dsn for dsn in given or [] if dsn.strip()]


def listed_schemas(ctx: typer.Context, given: list[str] | None) -> list[str]:
    """The schemas of ``--schema``, each as given (validated as a name), or of its
    environment variable, split at commas and whitespace."""
    text = _from_environment(ctx, "schema")
    return split_schemas(text) if text is not None else list(given or [])


MaxDbConnectionsOption = Annotated[
    int,
    typer.Option(
        "--max-db-connections",
        envvar="OUTBOX_RELAY_MAX_DB_CONNECTIONS",
        metavar="N",
        help="At most N PostgreSQL connections to each database; an outbox that would "
        "need more is not drained, and says so (0: no cap).",
    ),
]
DiscoverEveryOption = Annotated[
    str,
    typer.Option(
        "--discover-every",
        envvar="OUTBOX_RELAY_DISCOVER_EVERY",
        metavar="DURATION",
        help="With --schema-pattern: how often to look for schemas migrated or dropped.",
    ),
]
DEFAULT_DISCOVER_EVERY = f"{defaults.DEFAULT_DISCOVER_EVERY:g}s"
