"""The ``outbox-relay`` command. Every flag also reads an ``OUTBOX_RELAY_*`` variable."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
import typer

from relay import config as defaults
from relay.config import RelayConfig
from relay.db import connection_failure
from relay.dsn import redact, secrets_in
from relay.durations import parse_duration
from relay.errors import ConfigError, RelayError
from relay.inbox.cli import InboxOnlyOption, build_inbox_app, describe_migration, migration_tracks
from relay.logs import configure_logging
from relay.migrations import migrate, render_script
from relay.status import collect_status, format_status

log = logging.getLogger("outbox_relay.cli")
app = typer.Typer(
    name="outbox-relay",
    help="Relay transactional outbox events from PostgreSQL to Kafka or RabbitMQ.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
_secrets: list[str] = []


def _env(name: str) -> str:
    return f"OUTBOX_RELAY_{name}"


DsnOption = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar=_env("DSN"),
        show_default=False,
        help="PostgreSQL connection string (URL or key=value).",
    ),
]
SchemaOption = Annotated[
    str,
    typer.Option("--schema", envvar=_env("SCHEMA"), help="Schema that holds the outbox."),
]


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    text = redact(message)
    for secret in _secrets:
        text = text.replace(secret, "***")
    typer.echo(f"outbox-relay: error: {text}", err=True)
    raise typer.Exit(code)


def clear_errors(command: F) -> F:
    """Turn every failure into one scrubbed line on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _secrets[:] = secrets_in(*(str(v) for v in kwargs.values() if isinstance(v, str)))
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except RelayError as exc:
            fail(str(exc))
        except psycopg.Error as exc:
            fail(str(connection_failure(kwargs.get("dsn", ""), exc)))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            log.debug("internal error", exc_info=True)
            fail(f"internal error ({type(exc).__name__}): {exc}", EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


def _check_schema_name(schema: str) -> None:
    if not defaults.is_plain_identifier(schema):
        raise ConfigError(
            f"the schema name {schema!r} is not a plain identifier "
            "(lowercase letters, digits and underscores, not starting with a digit)"
        )


def _connect(
    dsn: str, timeout: float = defaults.DEFAULT_CONNECT_TIMEOUT
) -> psycopg.Connection[Any]:
    if not dsn.strip():
        raise ConfigError("the database DSN is empty; pass --dsn or set OUTBOX_RELAY_DSN")
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, round(timeout)))
    except psycopg.Error as exc:
        raise connection_failure(dsn, exc) from None


@app.command("migrate")
@clear_errors
def migrate_command(
    dsn: Annotated[
        str,
        typer.Option(
            "--dsn",
            envvar=_env("DSN"),
            show_default=False,
            help="PostgreSQL connection string (not needed with --print).",
        ),
    ] = "",
    schema: SchemaOption = defaults.DEFAULT_SCHEMA,
    print_sql: Annotated[
        bool,
        typer.Option(
            "--print",
            "--dry-run",
            envvar=_env("MIGRATE_PRINT"),
            help="Write the SQL to stdout instead of applying it.",
        ),
    ] = False,
    inbox_only: InboxOnlyOption = False,
) -> None:
    """Create or upgrade the outbox schema (idempotent, versioned)."""
    _check_schema_name(schema)
    tracks = migration_tracks(inbox_only)
    if print_sql:
        sys.stdout.write(render_script(schema, tracks=tracks))
        return
    with _connect(dsn) as conn:
        applied = migrate(conn, schema, tracks=tracks)
    typer.echo(describe_migration(schema, applied, tracks))


@app.command("status")
@clear_errors
def status_command(
    dsn: DsnOption = "",
    schema: SchemaOption = defaults.DEFAULT_SCHEMA,
    as_json: Annotated[
        bool, typer.Option("--json", envvar=_env("STATUS_JSON"), help="Print JSON instead of text.")
    ] = False,
) -> None:
    """Show the backlog, and which relays are alive and what each owns."""
    _check_schema_name(schema)
    with _connect(dsn) as conn:
        status = collect_status(conn, schema)
    if as_json:
        typer.echo(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(format_status(status))


def parse_options(pairs: list[str], flag: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{flag} takes name=value, got {redact(pair)!r}")
        options[name.strip()] = value
    return options


@app.command("run")
@clear_errors
def run_command(
    dsn: DsnOption = "",
    schema: SchemaOption = defaults.DEFAULT_SCHEMA,
    mode: Annotated[
        str, typer.Option("--mode", envvar=_env("MODE"), help="poll (cdc arrives later).")
    ] = defaults.DEFAULT_MODE,
    connector: Annotated[
        str,
        typer.Option(
            "--connector", envvar=_env("CONNECTOR"), help="Broker connector: kafka or rabbitmq."
        ),
    ] = defaults.DEFAULT_CONNECTOR,
    kafka_bootstrap: Annotated[
        str,
        typer.Option(
            "--kafka-bootstrap", envvar=_env("KAFKA_BOOTSTRAP"), help="Kafka bootstrap servers."
        ),
    ] = defaults.DEFAULT_KAFKA_BOOTSTRAP,
    kafka_option: Annotated[
        list[str] | None,
        typer.Option(
            "--kafka-option",
            envvar=_env("KAFKA_OPTION"),
            help="librdkafka property name=value; repeatable (TLS, SASL, ...).",
        ),
    ] = None,
    amqp_url: Annotated[
        str, typer.Option("--amqp-url", envvar=_env("AMQP_URL"), help="RabbitMQ URL.")
    ] = defaults.DEFAULT_AMQP_URL,
    amqp_exchange: Annotated[
        str,
        typer.Option(
            "--amqp-exchange",
            envvar=_env("AMQP_EXCHANGE"),
            help="Exchange to publish to (a durable topic exchange).",
        ),
    ] = defaults.DEFAULT_AMQP_EXCHANGE,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            envvar=_env("BATCH_SIZE"),
            help="Messages claimed and published per batch.",
        ),
    ] = defaults.DEFAULT_BATCH_SIZE,
    publish_timeout: Annotated[
        str,
        typer.Option(
            "--publish-timeout",
            envvar=_env("PUBLISH_TIMEOUT"),
            help="Wait this long for broker confirms of a batch.",
        ),
    ] = "5s",
    lease_ttl: Annotated[
        str,
        typer.Option(
            "--lease-ttl",
            envvar=_env("LEASE_TTL"),
            help="A dead relay's buckets move to others after this long.",
        ),
    ] = "10s",
    poll_interval: Annotated[
        str,
        typer.Option(
            "--poll-interval",
            envvar=_env("POLL_INTERVAL"),
            help="Fallback poll when no NOTIFY arrives.",
        ),
    ] = "1s",
    retention: Annotated[
        str,
        typer.Option(
            "--retention",
            envvar=_env("RETENTION"),
            help="Keep sent messages this long; 0 deletes them on ack.",
        ),
    ] = "1h",
    shutdown_timeout: Annotated[
        str,
        typer.Option(
            "--shutdown-timeout",
            envvar=_env("SHUTDOWN_TIMEOUT"),
            help="Bound on the drain after SIGTERM.",
        ),
    ] = "15s",
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level", envvar=_env("LOG_LEVEL"), help="debug, info, warning or error."
        ),
    ] = "info",
) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(
            f"the log level {log_level!r} is unknown; use debug, info, warning or error"
        )
    config = RelayConfig(
        dsn=dsn,
        schema=schema,
        mode=mode,
        connector=connector,
        kafka_bootstrap=kafka_bootstrap,
        kafka_options=parse_options(kafka_option or [], "--kafka-option"),
        amqp_url=amqp_url,
        amqp_exchange=amqp_exchange,
        batch_size=batch_size,
        publish_timeout=parse_duration(publish_timeout, "publish timeout"),
        lease_ttl=parse_duration(lease_ttl, "lease TTL"),
        poll_interval=parse_duration(poll_interval, "poll interval"),
        retention=parse_duration(retention, "retention"),
        shutdown_timeout=parse_duration(shutdown_timeout, "shutdown timeout"),
    ).validate()
    _secrets.extend(secrets_in(*config.kafka_options.values()))
    configure_logging(log_level, _secrets)
    from relay.service import preflight, run_service

    preflight(config)
    asyncio.run(run_service(config))


app.add_typer(build_inbox_app(clear_errors, _connect), name="inbox")


def main() -> None:
    app()
