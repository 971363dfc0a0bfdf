"""``outbox-relay run``: assemble the relay's configuration from the options, check it,
and run the service until SIGTERM or SIGINT.

The command with the most options, kept apart from relay/cli/app.py so that module stays
a readable list of commands; the service itself is imported only when the relay starts.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from relay import config as defaults
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
from relay.cli.common import DsnFileOption, env_var
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
from relay.cli.guard import clear_errors, dsns_from, known_secrets
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
from relay.logs import configure_logging
from relay.secrets import secret_values


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
            envvar=env_var("MODE"),
            metavar="poll|cdc",
            help="poll (leases + SKIP LOCKED) or cdc (logical replication, pgoutput).",
        ),
    ] = defaults.DEFAULT_MODE,
    connector: Annotated[
        str,
        typer.Option(
            "--connector",
            envvar=env_var("CONNECTOR"),
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
            envvar=env_var("MAX_MESSAGE_BYTES"),
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
            envvar=env_var("LOG_LEVEL"),
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
