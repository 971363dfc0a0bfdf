"""The typer app behind ``outbox-relay dead-letters`` (see relay.deadletters)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import orjson
import typer

from relay.cli.command import RelayTyper
from relay.cli.common import Connect, DsnFileOption, DsnOption, SchemaOption
from relay.config import DEFAULT_SCHEMA
from relay.deadletters import (
    LIST_LIMIT,
    MAX_LIST_LIMIT,
    Guard,
    Selection,
    count_dead_letters,
    drop_dead_letters,
    format_list,
    format_one,
    list_dead_letters,
    retry_dead_letters,
    selected_seqs,
    show_dead_letter,
)
from relay.durations import parse_age
from relay.errors import ConfigError
from relay.migrations import require_schema
from relay.names import check_schema_name

ENV = "OUTBOX_RELAY_DEAD_LETTERS_"
AsJson = Annotated[
    bool, typer.Option("--json", envvar=f"{ENV}JSON", help="Print JSON instead of text.")
]
Topic = Annotated[
    str | None,
    typer.Option("--topic", envvar=f"{ENV}TOPIC", metavar="TOPIC", help="Only this topic."),
]
Key = Annotated[
    str | None,
    typer.Option("--key", envvar=f"{ENV}KEY", metavar="KEY", help="Only this message key."),
]
OlderThan = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        envvar=f"{ENV}OLDER_THAN",
        metavar="DURATION",
        help="Dead for longer than this (e.g. 1h).",
    ),
]
NewerThan = Annotated[
    str | None,
    typer.Option(
        "--newer-than",
        envvar=f"{ENV}NEWER_THAN",
        metavar="DURATION",
        help="Dead for less than this (e.g. 15m).",
    ),
]
Limit = Annotated[
    int,
    typer.Option("--limit", envvar=f"{ENV}LIMIT", metavar="N", help="Show at most this many."),
]
Ids = Annotated[
    list[str] | None,
    typer.Argument(help="Message ids (UUIDs).", metavar="ID", show_default=False),
]
# One variable per command: a variable that made `drop` take every dead letter when
# meant for `retry` would be a trap.
RetryAll = Annotated[
    bool,
    typer.Option(
        "--all", envvar=f"{ENV}RETRY_ALL", help="Every dead letter (when no filter is given)."
    ),
]
DropAll = Annotated[
    bool,
    typer.Option(
        "--all", envvar=f"{ENV}DROP_ALL", help="Every dead letter (when no filter is given)."
    ),
]


def _selection(
    topic: str | None,
    key: str | None,
    older_than: str | None,
    newer_than: str | None,
    ids: list[str] | None = None,
) -> Selection:
    return Selection(
        topic=topic,
        key=key,
        older_than=None if older_than is None else parse_age(older_than, "--older-than age"),
        newer_than=None if newer_than is None else parse_age(newer_than, "--newer-than age"),
        ids=[_uuid(i) for i in ids] if ids else None,
    )


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a message id (a UUID)") from None


def _bulk(
    connect: Connect,
    dsn: tuple[str, str | None],
    schema: str,
    selection: Selection,
    operation: Callable[[Any, str, list[int]], int],
    verb: str,
    everything: bool,
) -> None:
    check_schema_name(schema)
    if not selection.narrowed and not everything:
        raise ConfigError(
            f"name the dead letters to {verb}: message ids, a filter (--topic, --key, "
            "--older-than, --newer-than), or --all"
        )
    with connect(*dsn) as conn:
        require_schema(conn, schema)
        total = count_dead_letters(conn, schema, selection)
        done = 0
        # Imported here: rich is a large import that only this command's progress bar needs.
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (TextColumn(f"{verb}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, disable=not sys.stderr.isatty(), transient=True) as bar:
            task = bar.add_task(verb, total=total)
            for chunk in selected_seqs(conn, schema, selection):
                done += operation(conn, schema, chunk)
                bar.update(task, completed=done)
    past = {"retry": "put back into the outbox", "drop": "dropped"}[verb]
    typer.echo(f"{done} dead letter{'s' if done != 1 else ''} {past}")


def build_dead_letters_app(guard: Guard[Any], connect: Connect) -> typer.Typer:
    """The ``dead-letters`` command group; ``guard`` turns failures into one clear line."""
    app = RelayTyper(
        name="dead-letters",
        no_args_is_help=True,
        help="Messages the broker refused or that used up their attempts.",
    )
    _read_commands(app, guard, connect)
    _bulk_commands(app, guard, connect)
    return app


def _read_commands(app: typer.Typer, guard: Guard[Any], connect: Connect) -> None:
    @app.command("list")
    @guard
    def list_command(
        dsn: DsnOption = "",
        dsn_file: DsnFileOption = None,
        schema: SchemaOption = DEFAULT_SCHEMA,
        topic: Topic = None,
        key: Key = None,
        older_than: OlderThan = None,
        newer_than: NewerThan = None,
        limit: Limit = LIST_LIMIT,
        as_json: AsJson = False,
    ) -> None:
        """List dead letters, oldest first."""
        check_schema_name(schema)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ConfigError(f"--limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        selection = _selection(topic, key, older_than, newer_than)
        with connect(dsn, dsn_file) as conn:
            require_schema(conn, schema)
            rows = list_dead_letters(conn, schema, selection, limit)
            total = count_dead_letters(conn, schema, selection)
        if as_json:
            typer.echo(orjson.dumps({"total": total, "dead_letters": rows}).decode())
        else:
            typer.echo(format_list(rows, total))

    @app.command("show")
    @guard
    def show_command(
        message_id: Annotated[str, typer.Argument(help="The message id (a UUID).")],
        dsn: DsnOption = "",
        dsn_file: DsnFileOption = None,
        schema: SchemaOption = DEFAULT_SCHEMA,
        as_json: AsJson = False,
    ) -> None:
        """Show one dead letter with its payload, headers and error."""
        check_schema_name(schema)
        wanted = _uuid(message_id)
        with connect(dsn, dsn_file) as conn:
            require_schema(conn, schema)
            letter = show_dead_letter(conn, schema, wanted)
        if letter is None:
            typer.echo(f"outbox-relay: error: no dead letter with id {wanted}", err=True)
            raise typer.Exit(1)
        typer.echo(orjson.dumps(letter).decode() if as_json else format_one(letter))


def _bulk_commands(app: typer.Typer, guard: Guard[Any], connect: Connect) -> None:
    @app.command("retry")
    @guard
    def retry_command(
        ids: Ids = None,
        dsn: DsnOption = "",
        dsn_file: DsnFileOption = None,
        schema: SchemaOption = DEFAULT_SCHEMA,
        topic: Topic = None,
        key: Key = None,
        older_than: OlderThan = None,
        newer_than: NewerThan = None,
        everything: RetryAll = False,
    ) -> None:
        """Put dead letters back into the outbox in their original order; keys flow again."""
        selection = _selection(topic, key, older_than, newer_than, ids)
        _bulk(connect, (dsn, dsn_file), schema, selection, retry_dead_letters, "retry", everything)

    @app.command("drop")
    @guard
    def drop_command(
        ids: Ids = None,
        dsn: DsnOption = "",
        dsn_file: DsnFileOption = None,
        schema: SchemaOption = DEFAULT_SCHEMA,
        topic: Topic = None,
        key: Key = None,
        older_than: OlderThan = None,
        newer_than: NewerThan = None,
        everything: DropAll = False,
    ) -> None:
        """Delete dead letters for good and let their keys flow again."""
        selection = _selection(topic, key, older_than, newer_than, ids)
        _bulk(connect, (dsn, dsn_file), schema, selection, drop_dead_letters, "drop", everything)
