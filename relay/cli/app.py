"""The ``outbox-relay`` command. Every flag also reads an ``OUTBOX_RELAY_*`` variable."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from relay import config as defaults
from relay.cdc.settings import CdcSettings
from relay.cdc.status import cdc_status, format_cdc_status
from relay.cli.cdc_options import (
    HEARTBEAT_DEFAULT,
    LINGER_DEFAULT,
    TAKEOVER_DEFAULT,
    CdcDebeziumOption,
    CdcDebeziumOptionOption,
    CdcPublicationOption,
    CdcSlotOption,
    CdcTableOption,
    cdc_settings,
)
from relay.cli.command import RelayTyper
from relay.cli.common import (
    DsnFileOption,
    VersionOption,
    env_var,
    relay_version,
)
from relay.cli.connectors import build_connectors_command
from relay.cli.dead_letters import build_dead_letters_app
from relay.cli.guard import (
    EXIT_FAILURE,
    clear_errors,
    connect,
    connect_either,
    dsns_from,
    scrub,
)
from relay.cli.inbox import InboxOnlyOption, build_inbox_app, describe_migration, migration_tracks
from relay.cli.many_outboxes import (
    OutboxChoice,
    doctor_each,
    migrate_each,
    report_each,
    show_many_status,
)
from relay.cli.migrate_options import (
    DoctorDsnsOption,
    GrantsModeOption,
    MigrateDsnsOption,
    MigrateSchemaPatternOption,
    PrintGrantsOption,
    PrintSqlOption,
    StatusDsnsOption,
    StatusSchemaPatternOption,
)
from relay.cli.outbox_options import (
    SchemasOption,
    listed_dsns,
    listed_schemas,
)
from relay.cli.run_command import run_command
from relay.errors import ConfigError
from relay.grants import render_grants
from relay.migrations import applied_by_track, migrate, render_script
from relay.status import collect_status, format_status

app = RelayTyper(
    name="outbox-relay",
    help="Relay transactional outbox events from PostgreSQL to Kafka or RabbitMQ.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options(version: VersionOption = False) -> None:
    """Relay transactional outbox events from PostgreSQL to Kafka or RabbitMQ."""


@app.command("migrate")
@clear_errors
def migrate_command(
    ctx: typer.Context,
    dsn: MigrateDsnsOption = None,
    schema: SchemasOption = None,
    schema_pattern: MigrateSchemaPatternOption = None,
    print_sql: PrintSqlOption = False,
    inbox_only: InboxOnlyOption = False,
    dsn_file: DsnFileOption = None,
    print_grants: PrintGrantsOption = None,
    grants_mode: GrantsModeOption = defaults.DEFAULT_MODE,
) -> None:
    """Create or upgrade the outbox schema (idempotent, versioned) of each outbox given."""
    choice = _outbox_choice(ctx, dsn, dsn_file, schema, schema_pattern)
    tracks = migration_tracks(inbox_only)
    if print_grants is not None or print_sql:
        if choice.pattern is not None or len(choice.named_schemas) > 1:
            flag = "--print" if print_grants is None else "--print-grants"
            raise ConfigError(f"{flag} writes one schema's SQL; give one --schema per run")
        schema_name = choice.named_schemas[0]
        if print_grants is not None:
            sys.stdout.write(render_grants(print_grants, schema_name, grants_mode))
            return
        if len(choice.dsns) > 1:
            raise ConfigError("--print compares with one database; give one --dsn")
        sys.stdout.write(_printed_migrations(schema_name, tracks, choice.dsns))
        return
    if not choice.many:
        with connect(choice.dsns[0] if choice.dsns else "") as conn:
            applied = migrate(conn, choice.named_schemas[0], tracks=tracks)
        typer.echo(describe_migration(choice.named_schemas[0], applied, tracks))
        return
    choice.require_dsns()
    if not report_each(migrate_each(choice, tracks, connect), scrub):
        raise typer.Exit(EXIT_FAILURE)


def _outbox_choice(
    ctx: typer.Context,
    dsns: list[str] | None,
    dsn_file: str | None,
    schemas: list[str] | None,
    pattern: str | None,
) -> OutboxChoice:
    """The outboxes --dsn, --dsn-file, --schema and --schema-pattern name, checked."""
    choice = OutboxChoice(
        tuple(dsns_from(listed_dsns(ctx, dsns), dsn_file)),
        tuple(listed_schemas(ctx, schemas)),
        pattern,
    )
    choice.check()
    return choice


def _printed_migrations(schema: str, tracks: tuple[str, ...], dsns: tuple[str, ...]) -> str:
    """Every migration; with a DSN, only those that database still needs."""
    if not dsns:
        return render_script(schema, tracks=tracks)
    with connect(dsns[0]) as conn:
        done = applied_by_track(conn, schema, tracks)
    return render_script(schema, tracks=tracks, applied=done)


@app.command("status")
@clear_errors
def status_command(
    ctx: typer.Context,
    dsn: StatusDsnsOption = None,
    schema: SchemasOption = None,
    schema_pattern: StatusSchemaPatternOption = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar=env_var("STATUS_JSON"), help="Print JSON instead of text."),
    ] = False,
    dsn_file: DsnFileOption = None,
    cdc_slot: CdcSlotOption = None,
) -> None:
    """Show the backlog, which relays are alive and what each owns, and the CDC slot
    (of each outbox given, then the totals)."""
    choice = _outbox_choice(ctx, dsn, dsn_file, schema, schema_pattern)
    if choice.many:
        if cdc_slot is not None:
            raise ConfigError(
                "--cdc-slot names one outbox's slot; with several outboxes leave it out"
            )
        choice.require_dsns()
        if not show_many_status(choice, connect, scrub, as_json=as_json):
            raise typer.Exit(EXIT_FAILURE)
        return
    schema_name = choice.named_schemas[0]
    if cdc_slot is not None and (problems := CdcSettings(slot=cdc_slot).problems(schema_name)):
        raise ConfigError(" ".join(problems))
    with connect(choice.dsns[0] if choice.dsns else "") as conn:
        status = collect_status(conn, schema_name)
        cdc = cdc_status(conn, schema_name, cdc_slot)
    if cdc["exists"] or cdc_slot:
        status["cdc"] = cdc
    if as_json:
        status = {"version": relay_version(), **status}
        typer.echo(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        text = format_status(status)
        typer.echo(text + ("\n" + format_cdc_status(cdc) if "cdc" in status else ""))


@app.command("doctor")
@clear_errors
def doctor_command(
    ctx: typer.Context,
    dsn: DoctorDsnsOption = None,
    schema: SchemasOption = None,
    schema_pattern: StatusSchemaPatternOption = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode", envvar=env_var("MODE"), metavar="poll|cdc", help="Check for this mode."
        ),
    ] = defaults.DEFAULT_MODE,
    dsn_file: DsnFileOption = None,
    cdc_slot: CdcSlotOption = None,
    cdc_publication: CdcPublicationOption = None,
    cdc_table: CdcTableOption = None,
    cdc_debezium: CdcDebeziumOption = False,
    cdc_debezium_option: CdcDebeziumOptionOption = None,
) -> None:
    """Check, in plain words, that the database is ready for the relay in this mode
    (each outbox given, in a block of its own)."""
    choice = _outbox_choice(ctx, dsn, dsn_file, schema, schema_pattern)
    settings = cdc_settings(
        slot=cdc_slot,
        publication=cdc_publication,
        table=cdc_table,
        debezium=cdc_debezium,
        heartbeat=HEARTBEAT_DEFAULT,
        takeover_ttl=TAKEOVER_DEFAULT,
        linger=LINGER_DEFAULT,
        debezium_options=cdc_debezium_option,
    )
    if mode not in defaults.MODES:
        raise ConfigError(f"the mode {mode!r} is unknown; choose poll or cdc")
    if not doctor_each(choice, mode, settings, connect, scrub):
        raise typer.Exit(EXIT_FAILURE)


app.command("run")(run_command)
build_connectors_command(app, clear_errors)
app.add_typer(build_inbox_app(clear_errors, connect_either), name="inbox")
app.add_typer(build_dead_letters_app(clear_errors, connect_either), name="dead-letters")


def main() -> None:
    app()
