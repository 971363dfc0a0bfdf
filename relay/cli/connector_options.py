"""How ``outbox-relay run`` gathers a connector's options: generic and shorthand flags.

Every connector is configured the same way: ``--connector-option NAME=VALUE``
(repeatable), ``OUTBOX_RELAY_CONNECTOR_OPTION`` (one NAME=VALUE per line, so a value may
hold spaces and commas) and ``--connector-option-file`` (NAME=VALUE lines in a file only
its owner can read, for secrets). The connector's settings class parses and checks what
is gathered here (relay/connector_settings.py).

The Kafka and RabbitMQ flags of earlier versions stay as shorthands for their
connector's settings. A setting given by two of these ways is an error naming both (no
silent precedence), except that ``--kafka-option`` still wins over ``--kafka-option-file``,
as documented before. A shorthand of another connector than the one chosen is an error on
the command line, and ignored in the environment, which relays often share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from relay.errors import ConfigError
from relay.secrets import option_pairs, read_option_files, read_private_file, value_or_file

OPTION_ENV = "OUTBOX_RELAY_CONNECTOR_OPTION"
OPTION_FILE_ENV = "OUTBOX_RELAY_CONNECTOR_OPTION_FILE"
PANEL = "Connector settings"

ConnectorOption = Annotated[
    list[str] | None,
    typer.Option(
        "--connector-option",
        envvar=OPTION_ENV,
        metavar="NAME=VALUE",
        show_default=False,
        rich_help_panel=PANEL,
        help="A setting of the connector; repeatable. In the variable: one NAME=VALUE per "
        "line. `outbox-relay connectors NAME` lists a connector's settings.",
    ),
]
ConnectorOptionFile = Annotated[
    list[str] | None,
    typer.Option(
        "--connector-option-file",
        envvar=OPTION_FILE_ENV,
        metavar="PATH",
        show_default=False,
        rich_help_panel=PANEL,
        help="A file of NAME=VALUE lines (secrets) that only its owner can read (chmod 600); "
        "repeatable. In the variable: one path per line.",
    ),
]
KafkaBootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--kafka-bootstrap",
        metavar="HOST:PORT,...",
        envvar="OUTBOX_RELAY_KAFKA_BOOTSTRAP",
        show_default=False,
        rich_help_panel=PANEL,
        help="Kafka bootstrap servers (kafka's bootstrap.servers; default localhost:9092).",
    ),
]
KafkaOptionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--kafka-option",
        metavar="NAME=VALUE",
        envvar="OUTBOX_RELAY_KAFKA_OPTION",
        show_default=False,
        rich_help_panel=PANEL,
        help="librdkafka property name=value; repeatable (TLS, SASL, ...).",
    ),
]
KafkaOptionFileOption = Annotated[
    list[str] | None,
    typer.Option(
        "--kafka-option-file",
        metavar="PATH",
        envvar="OUTBOX_RELAY_KAFKA_OPTION_FILE",
        show_default=False,
        rich_help_panel=PANEL,
        help="File of librdkafka name=value lines (sasl.password, ...); --kafka-option wins.",
    ),
]
AmqpUrlOption = Annotated[
    str | None,
    typer.Option(
        "--amqp-url",
        metavar="URL",
        envvar="OUTBOX_RELAY_AMQP_URL",
        show_default=False,
        rich_help_panel=PANEL,
        help="RabbitMQ URL (rabbitmq's url; default amqp://guest:***@localhost:5672/%2F).",
    ),
]
AmqpUrlFileOption = Annotated[
    str | None,
    typer.Option(
        "--amqp-url-file",
        metavar="PATH",
        envvar="OUTBOX_RELAY_AMQP_URL_FILE",
        show_default=False,
        rich_help_panel=PANEL,
        help="Read the RabbitMQ URL from this file (a mounted secret) instead of --amqp-url.",
    ),
]
AmqpExchangeOption = Annotated[
    str | None,
    typer.Option(
        "--amqp-exchange",
        metavar="NAME",
        envvar="OUTBOX_RELAY_AMQP_EXCHANGE",
        show_default=False,
        rich_help_panel=PANEL,
        help="Exchange to publish to, a durable topic exchange (rabbitmq's exchange; "
        "default outbox).",
    ),
]


@dataclass(frozen=True)
class Shorthand:
    """A flag that sets one setting of one connector."""

    connector: str
    setting: str
    flag: str


# run's parameter name -> what it sets (--kafka-option[-file] and --amqp-url-file are
# gathered apart: several settings, or a file).
SHORTHANDS = {
    "kafka_bootstrap": Shorthand("kafka", "bootstrap.servers", "--kafka-bootstrap"),
    "amqp_url": Shorthand("rabbitmq", "url", "--amqp-url"),
    "amqp_exchange": Shorthand("rabbitmq", "exchange", "--amqp-exchange"),
}
AMQP_URL_FILE_FLAG = "--amqp-url-file"


def shorthands_of(connector: str) -> dict[str, list[str]]:
    """Setting name -> the shorthand flags that set it, for ``outbox-relay connectors``."""
    found: dict[str, list[str]] = {}
    for shorthand in SHORTHANDS.values():
        if shorthand.connector == connector:
            found.setdefault(shorthand.setting, []).append(shorthand.flag)
    if connector == "rabbitmq":
        found.setdefault("url", []).append(AMQP_URL_FILE_FLAG)
    return found


class _Gathered:
    """The options gathered so far and where each came from."""

    def __init__(self, connector: str) -> None:
        self.connector = connector
        self.values: dict[str, str] = {}
        self._sources: dict[str, str] = {}

    def add(self, name: str, value: str, source: str) -> None:
        if name in self._sources:
            first = self._sources[name]
            both = f"by {source}" if first == source else f"by {first} and by {source}"
            raise ConfigError(
                f"the {self.connector} connector's {name} is given twice, {both}; give it once"
            )
        self.values[name] = value
        self._sources[name] = source


def gather_connector_options(ctx: typer.Context) -> dict[str, str]:
    """The NAME=VALUE options of the chosen connector from every flag and variable."""
    params = ctx.params
    gathered = _Gathered(params["connector"])
    for path in _listed(ctx, "connector_option_file", OPTION_FILE_ENV):
        text = read_private_file(path, "connector options", "--connector-option-file")
        for name, value in option_pairs(text, f"{path!r} (--connector-option-file)"):
            gathered.add(name, value, f"--connector-option-file {path}")
    if _source(ctx, "connector_option") == "ENVIRONMENT":
        for name, value in option_pairs(os.environ.get(OPTION_ENV, ""), OPTION_ENV):
            gathered.add(name, value, OPTION_ENV)
    else:
        for name, value in _flag_pairs(params.get("connector_option"), "--connector-option"):
            gathered.add(name, value, "--connector-option")
    _gather_shorthands(ctx, gathered)
    return gathered.values


def _gather_shorthands(ctx: typer.Context, gathered: _Gathered) -> None:
    params = ctx.params
    for param, shorthand in SHORTHANDS.items():
        if params.get(param) is not None and _applies(ctx, param, shorthand.connector):
            gathered.add(shorthand.setting, params[param], _where(ctx, param, shorthand.flag))
    if params.get("amqp_url_file") and _applies(ctx, "amqp_url_file", "rabbitmq"):
        given = params["amqp_url"] if _source(ctx, "amqp_url") else None
        url = value_or_file(
            given,
            params["amqp_url_file"],
            what="AMQP URL",
            flag="--amqp-url",
            file_flag=AMQP_URL_FILE_FLAG,
        )
        if given is None and url is not None:
            gathered.add("url", url, AMQP_URL_FILE_FLAG)
    kafka = [p for p in ("kafka_option_file", "kafka_option") if params.get(p)]
    if all(_applies(ctx, param, "kafka") for param in kafka):
        files = read_option_files(params.get("kafka_option_file") or [], "--kafka-option-file")
        pairs = dict(_flag_pairs(params.get("kafka_option"), "--kafka-option"))
        for name, value in {**files, **pairs}.items():
            gathered.add(name, value, "--kafka-option" if name in pairs else "--kafka-option-file")


def _applies(ctx: typer.Context, param: str, connector: str) -> bool:
    """Whether the shorthand ``param`` counts; a typed one for another connector is an
    error, one from the environment is left to the relays it was meant for."""
    if ctx.params["connector"] == connector:
        return True
    if _source(ctx, param) == "COMMANDLINE":
        flag = next(o for o in _option(ctx, param).opts if o.startswith("--"))
        raise ConfigError(
            f"{flag} is a setting of the {connector} connector, but the connector is "
            f"{ctx.params['connector']!r}"
        )
    return False


def _flag_pairs(given: list[str] | None, flag: str) -> list[tuple[str, str]]:
    """NAME=VALUE flags as pairs; the value is everything after the first ``=``."""
    pairs = []
    for number, pair in enumerate(given or [], start=1):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            # the text may be a secret typed in the wrong form: say which, not what
            raise ConfigError(f"{flag} takes name=value; its value number {number} is not")
        pairs.append((name.strip(), value))
    return pairs


def _listed(ctx: typer.Context, param: str, envvar: str) -> list[str]:
    """A list option's values; from its variable, one per line (the CLI library would
    split the variable at every space)."""
    if _source(ctx, param) != "ENVIRONMENT":
        return list(ctx.params.get(param) or [])
    lines = (line.strip() for line in os.environ.get(envvar, "").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _where(ctx: typer.Context, param: str, flag: str) -> str:
    """The flag, or the variable it came from, for messages."""
    if _source(ctx, param) == "ENVIRONMENT":
        return str(_option(ctx, param).envvar)
    return flag


def _source(ctx: typer.Context, param: str) -> str | None:
    """COMMANDLINE, ENVIRONMENT, or None when the parameter kept its default."""
    source = ctx.get_parameter_source(param)
    if source is None or source.name == "DEFAULT":
        return None
    return str(source.name)


def _option(ctx: typer.Context, param: str) -> Any:
    return next(p for p in ctx.command.params if p.name == param)
