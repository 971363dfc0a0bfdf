"""``outbox-relay inbox ...`` and the ``migrate --inbox-only`` logic.

The main CLI (relay/cli.py) mounts the sub-app with its own error guard and connect
function, so failures read the same as every other command's::

    app.add_typer(build_inbox_app(clear_errors, _connect), name="inbox")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer

from relay.cli.command import RelayTyper
from relay.cli.common import Connect, DsnFileOption
from relay.config import DEFAULT_SCHEMA
from relay.durations import parse_age
from relay.errors import ConfigError
from relay.inbox.core import check_consumer, check_schema
from relay.inbox.retention import DEFAULT_PURGE_BATCH, MAX_PURGE_BATCH, purge_inbox
from relay.migrations import ALL_TRACKS, Migration, require_schema

F = TypeVar("F", bound=Callable[..., Any])
Guard = Callable[[F], F]

InboxOnlyOption = Annotated[
    bool,
    typer.Option(
        "--inbox-only",
        envvar="OUTBOX_RELAY_MIGRATE_INBOX_ONLY",
        help="Only the consumer inbox table (for services that only consume).",
    ),
]


def migration_tracks(inbox_only: bool) -> tuple[str, ...]:
    """The tracks ``outbox-relay migrate`` applies: both, or the inbox alone."""
    return ("inbox",) if inbox_only else ALL_TRACKS


def describe_migration(schema: str, applied: Sequence[Migration], tracks: Sequence[str]) -> str:
    """The line ``migrate`` prints: what it applied, or that everything is current."""
    what = " and ".join(tracks)
    if not applied:
        return f"{what} schema {schema!r} is up to date"
    return f"{what} schema {schema!r}: applied {', '.join(m.label for m in applied)}"


def build_inbox_app(guard: Guard[Any], connect: Connect) -> typer.Typer:
    """The ``inbox`` sub-command group; ``guard`` turns failures into one clear line."""
    app = RelayTyper(
        name="inbox",
        no_args_is_help=True,
        help="The consumer inbox that makes message handling idempotent.",
    )

    @app.command("purge")
    @guard
    def purge_command(
        dsn: Annotated[
            str,
            typer.Option(
                "--dsn",
                envvar="OUTBOX_RELAY_DSN",
                metavar="DSN",
                show_default=False,
                help="PostgreSQL connection string of the consumer's database.",
            ),
        ] = "",
        dsn_file: DsnFileOption = None,
        schema: Annotated[
            str,
            typer.Option(
                "--schema",
                envvar="OUTBOX_RELAY_SCHEMA",
                metavar="NAME",
                help="Schema that holds the inbox table.",
            ),
        ] = DEFAULT_SCHEMA,
        older_than: Annotated[
            str,
            typer.Option(
                "--older-than",
                envvar="OUTBOX_RELAY_INBOX_OLDER_THAN",
                metavar="DURATION",
                help="The dedupe window: forget ids processed longer ago (7d, 36h, ...). "
                "Keep it longer than any redelivery can take.",
            ),
        ] = "7d",
        consumer: Annotated[
            str | None,
            typer.Option(
                "--consumer",
                envvar="OUTBOX_RELAY_INBOX_CONSUMER",
                metavar="NAME",
                show_default=False,
                help="Only this consumer's entries (default: every consumer's).",
            ),
        ] = None,
        batch_size: Annotated[
            int,
            typer.Option(
                "--batch-size",
                envvar="OUTBOX_RELAY_INBOX_PURGE_BATCH",
                metavar="N",
                help="Entries deleted per short transaction.",
            ),
        ] = DEFAULT_PURGE_BATCH,
    ) -> None:
        """Delete inbox entries older than the dedupe window, in small batches."""
        check_schema(schema)
        if consumer is not None:
            check_consumer(consumer)
        window = parse_age(older_than, "dedupe window")
        if not 1 <= batch_size <= MAX_PURGE_BATCH:
            raise ConfigError(
                f"the purge batch size must be at least 1 and at most {MAX_PURGE_BATCH}, "
                f"got {batch_size}"
            )
        with connect(dsn, dsn_file) as conn:
            require_schema(conn, schema, track="inbox")
            deleted = purge_inbox(conn, schema, window, consumer=consumer, batch_size=batch_size)
        whose = f" of consumer {consumer!r}" if consumer else ""
        typer.echo(f"inbox {schema!r}: removed {deleted} entries{whose} older than {older_than}")

    return app
