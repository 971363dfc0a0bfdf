"""The ``outbox-relay`` command. Every flag also reads an ``OUTBOX_RELAY_*`` variable."""

from __future__ import annotations

import asyncio
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
    SNAPSHOT_DEFAULT,
    TAKEOVER_DEFAULT,
    CdcDebeziumOption,
    CdcDebeziumOptionOption,
    CdcHeartbeatOption,
    CdcLingerOption,
    CdcPublicationOption,
    CdcSlotOption,
    CdcSnapshotOption,
    CdcTableOption,
    CdcTakeoverOption,
    cdc_settings,
)
from relay.cli.command import RelayTyper
from relay.cli.common import (
    DsnFileOption,
    VersionOption,
    relay_version,
)
from relay.cli.connector_options import (
    AmqpExchangeOption,
    AmqpUrlFileOption,
    AmqpUrlOption,
    ConnectorOption,
    ConnectorOptionFile,
    KafkaBootstrapOption,
    KafkaOptionFileOption,
    KafkaOptionOption,
    gather_connector_options,
)
from relay.cli.connectors import build_connectors_command
from relay.cli.dead_letters import build_dead_letters_app
from relay.cli.drain_options import (
    DEFAULT_LEASE_TTL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_POLL_LINGER,
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_RETENTION,
    DEFAULT_SHUTDOWN_TIMEOUT,
    BatchSizeOption,
    ClaimLanesOption,
    LeaseTtlOption,
    PollIntervalOption,
    PollLingerOption,
    PublishTimeoutOption,
    RetentionOption,
    ShutdownTimeoutOption,
    drain_settings,
)
from relay.cli.guard import (
    EXIT_FAILURE,
    clear_errors,
    connect,
    connect_either,
    dsns_from,
    known_secrets,
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
    DEFAULT_DISCOVER_EVERY,
    DiscoverEveryOption,
    DsnsOption,
    MaxDbConnectionsOption,
    SchemaPatternOption,
    SchemasOption,
    listed_dsns,
    listed_schemas,
)
from relay.cli.run_options import (
    DEFAULT_RETRY_BASE,
    DEFAULT_RETRY_CAP,
    CloudEventsModeOption,
    CloudEventsSourceOption,
    EnvelopeOption,
    LogFormatOption,
    MaxAttemptsOption,
    MetricsHostOption,
    MetricsPortOption,
    OnPoisonOption,
    RetryBaseOption,
    RetryCapOption,
    TopicTemplateOption,
    format_settings,
    operability_settings,
)
from relay.config import RelayConfig
from relay.connector import connector_factory
from relay.durations import parse_duration
from relay.errors import ConfigError
from relay.formats.settings import ENVELOPE_NONE
from relay.grants import render_grants
from relay.logs import configure_logging
from relay.migrations import applied_by_track, migrate, render_script
from relay.secrets import secret_values
from relay.status import collect_status, format_status

app = RelayTyper(
    name="outbox-relay",
    help="Relay transactional outbox events from PostgreSQL to Kafka or RabbitMQ.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _env(name: str) -> str:
    return f"OUTBOX_RELAY_{name}"


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
        bool, typer.Option("--json", envvar=_env("STATUS_JSON"), help="Print JSON instead of text.")
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
            "--mode", envvar=_env("MODE"), metavar="poll|cdc", help="Check for this mode."
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


@app.command("run")
@clear_errors
def run_command(
    ctx: typer.Context,
    dsn: DsnsOption = None,
    dsn_file: DsnFileOption = None,
    schema: SchemasOption = None,
    schema_pattern: SchemaPatternOption = None,
    max_db_connections: MaxDbConnectionsOption = 0,
    discover_every: DiscoverEveryOption = DEFAULT_DISCOVER_EVERY,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            envvar=_env("MODE"),
            metavar="poll|cdc",
            help="poll (leases + SKIP LOCKED) or cdc (logical replication, pgoutput).",
        ),
    ] = defaults.DEFAULT_MODE,
    connector: Annotated[
        str,
        typer.Option(
            "--connector",
            envvar=_env("CONNECTOR"),
            metavar="NAME",
            help="Connector name: kafka, rabbitmq or an installed one "
            "(`outbox-relay connectors` lists them).",
        ),
    ] = defaults.DEFAULT_CONNECTOR,
    connector_option: ConnectorOption = None,
    connector_option_file: ConnectorOptionFile = None,
    kafka_bootstrap: KafkaBootstrapOption = None,
    kafka_option: KafkaOptionOption = None,
    kafka_option_file: KafkaOptionFileOption = None,
    amqp_url: AmqpUrlOption = None,
    amqp_url_file: AmqpUrlFileOption = None,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            "--max-message-bytes",
            envvar=_env("MAX_MESSAGE_BYTES"),
            metavar="BYTES",
            help="Park messages larger than this (payload, key, topic and headers) unsent.",
        ),
    ] = defaults.DEFAULT_MAX_MESSAGE_BYTES,
    amqp_exchange: AmqpExchangeOption = None,
    batch_size: BatchSizeOption = defaults.DEFAULT_BATCH_SIZE,
    claim_lanes: ClaimLanesOption = defaults.DEFAULT_CLAIM_LANES,
    publish_timeout: PublishTimeoutOption = DEFAULT_PUBLISH_TIMEOUT,
    lease_ttl: LeaseTtlOption = DEFAULT_LEASE_TTL,
    poll_interval: PollIntervalOption = DEFAULT_POLL_INTERVAL,
    poll_linger: PollLingerOption = DEFAULT_POLL_LINGER,
    retention: RetentionOption = DEFAULT_RETENTION,
    shutdown_timeout: ShutdownTimeoutOption = DEFAULT_SHUTDOWN_TIMEOUT,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            envvar=_env("LOG_LEVEL"),
            metavar="LEVEL",
            help="debug, info, warning or error.",
        ),
    ] = "info",
    retry_base: RetryBaseOption = DEFAULT_RETRY_BASE,
    retry_cap: RetryCapOption = DEFAULT_RETRY_CAP,
    max_attempts: MaxAttemptsOption = defaults.DEFAULT_MAX_ATTEMPTS,
    on_poison: OnPoisonOption = defaults.DEFAULT_ON_POISON,
    metrics_host: MetricsHostOption = defaults.DEFAULT_METRICS_HOST,
    metrics_port: MetricsPortOption = defaults.DEFAULT_METRICS_PORT,
    log_format: LogFormatOption = defaults.DEFAULT_LOG_FORMAT,
    cdc_slot: CdcSlotOption = None,
    cdc_publication: CdcPublicationOption = None,
    cdc_table: CdcTableOption = None,
    cdc_debezium: CdcDebeziumOption = False,
    cdc_heartbeat: CdcHeartbeatOption = HEARTBEAT_DEFAULT,
    cdc_takeover_ttl: CdcTakeoverOption = TAKEOVER_DEFAULT,
    cdc_linger: CdcLingerOption = LINGER_DEFAULT,
    cdc_snapshot: CdcSnapshotOption = SNAPSHOT_DEFAULT,
    cdc_debezium_option: CdcDebeziumOptionOption = None,
    topic_template: TopicTemplateOption = None,
    envelope: EnvelopeOption = ENVELOPE_NONE,
    cloudevents_source: CloudEventsSourceOption = None,
    cloudevents_mode: CloudEventsModeOption = None,
) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            f"the log level {log_level!r} is unknown; use debug, info, warning or error"
        )
    dsns = dsns_from(listed_dsns(ctx, dsn), dsn_file)
    schemas = listed_schemas(ctx, schema)
    config = RelayConfig(
        dsn=dsns[0] if dsns else "",
        dsns=tuple(dsns) if len(dsns) > 1 else (),
        schema=schemas[0] if schemas else defaults.DEFAULT_SCHEMA,
        schemas=tuple(schemas),
        schema_pattern=schema_pattern,
        max_db_connections=max_db_connections,
        discover_every=parse_duration(discover_every, "schema discovery interval"),
        mode=mode,
        connector=connector,
        connector_options=gather_connector_options(ctx),
        max_message_bytes=max_message_bytes,
        cdc=cdc_settings(
            slot=cdc_slot,
            publication=cdc_publication,
            table=cdc_table,
            debezium=cdc_debezium,
            heartbeat=cdc_heartbeat,
            takeover_ttl=cdc_takeover_ttl,
            linger=cdc_linger,
            snapshot=cdc_snapshot,
            debezium_options=cdc_debezium_option,
        ),
        formats=format_settings(
            topic_template=topic_template,
            envelope=envelope,
            cloudevents_source=cloudevents_source,
            cloudevents_mode=cloudevents_mode,
        ),
        **drain_settings(
            batch_size=batch_size,
            claim_lanes=claim_lanes,
            publish_timeout=publish_timeout,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            poll_linger=poll_linger,
            retention=retention,
            shutdown_timeout=shutdown_timeout,
        ),
        **operability_settings(
            retry_base=retry_base,
            retry_cap=retry_cap,
            max_attempts=max_attempts,
            on_poison=on_poison,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
            log_format=log_format,
        ),
    ).validate()
    factory = connector_factory(config.connector)
    known_secrets.extend(secret_values(config.connector_options, factory.settings.is_secret))
    factory.settings.parse(config.connector_options)  # every problem before connecting
    configure_logging(log_level, known_secrets, log_format=config.log_format)
    from relay.service import preflight, run_service

    if not config.many_outboxes:
        preflight(config)  # with several, each outbox waits for its own database instead
    asyncio.run(run_service(config))


build_connectors_command(app, clear_errors)
app.add_typer(build_inbox_app(clear_errors, connect_either), name="inbox")
app.add_typer(build_dead_letters_app(clear_errors, connect_either), name="dead-letters")


def main() -> None:
    app()
