"""The CDC flags of ``outbox-relay run`` and ``doctor``, kept beside the CDC code."""

from __future__ import annotations

from typing import Annotated

import typer

from relay.cdc.settings import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LINGER,
    DEFAULT_TAKEOVER_TTL,
    SNAPSHOT_NONE,
    CdcSettings,
)
from relay.durations import parse_duration
from relay.errors import ConfigError


def _env(name: str) -> str:
    return f"OUTBOX_RELAY_{name}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


CdcSlotOption = Annotated[
    str | None,
    typer.Option(
        "--cdc-slot",
        envvar=_env("CDC_SLOT"),
        metavar="NAME",
        show_default=False,
        help="CDC: logical replication slot (default outbox_relay_<schema>).",
    ),
]
CdcPublicationOption = Annotated[
    str | None,
    typer.Option(
        "--cdc-publication",
        envvar=_env("CDC_PUBLICATION"),
        metavar="NAME",
        show_default=False,
        help="CDC: publication (default outbox_relay_<schema>).",
    ),
]
CdcTableOption = Annotated[
    str | None,
    typer.Option(
        "--cdc-table",
        envvar=_env("CDC_TABLE"),
        metavar="SCHEMA.TABLE",
        show_default=False,
        help="CDC: schema.table to capture (default <schema>.messages).",
    ),
]
CdcDebeziumOption = Annotated[
    bool,
    typer.Option(
        "--cdc-debezium",
        envvar=_env("CDC_DEBEZIUM"),
        help="CDC: --cdc-table is a Debezium outbox table (aggregatetype, ...).",
    ),
]
CdcHeartbeatOption = Annotated[
    str,
    typer.Option(
        "--cdc-heartbeat",
        envvar=_env("CDC_HEARTBEAT"),
        metavar="DURATION",
        help="CDC: emit a heartbeat this often so an idle slot advances; 0 = off.",
    ),
]
CdcTakeoverOption = Annotated[
    str,
    typer.Option(
        "--cdc-takeover-ttl",
        envvar=_env("CDC_TAKEOVER_TTL"),
        metavar="DURATION",
        help="CDC: a standby takes over this long after the active relay froze.",
    ),
]
CdcLingerOption = Annotated[
    str,
    typer.Option(
        "--cdc-linger",
        envvar=_env("CDC_LINGER"),
        metavar="DURATION",
        help="CDC: when no event arrived during the last publish but one comes within two "
        "lingers of its end, wait this long so the transactions right behind it share its "
        "batch.",
    ),
]
CdcSnapshotOption = Annotated[
    str,
    typer.Option(
        "--cdc-snapshot",
        envvar=_env("CDC_SNAPSHOT"),
        help="CDC with --cdc-debezium: existing also publishes the rows already in the "
        "table when the slot is first created; none publishes only later inserts.",
    ),
]
CdcDebeziumOptionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--cdc-debezium-option",
        envvar=_env("CDC_DEBEZIUM_OPTION"),
        show_default=False,
        help="CDC with --cdc-debezium: a Debezium outbox router option name=value, "
        "repeatable (route.by.field, table.field.event.id/key/payload/timestamp, "
        "table.fields.additional.placement).",
    ),
]
SNAPSHOT_DEFAULT = SNAPSHOT_NONE
HEARTBEAT_DEFAULT = _seconds(DEFAULT_HEARTBEAT_INTERVAL)
TAKEOVER_DEFAULT = _seconds(DEFAULT_TAKEOVER_TTL)
LINGER_DEFAULT = f"{DEFAULT_LINGER * 1000:g}ms"


def cdc_settings(
    *,
    slot: str | None,
    publication: str | None,
    table: str | None,
    debezium: bool,
    heartbeat: str,
    takeover_ttl: str,
    linger: str,
    snapshot: str = SNAPSHOT_NONE,
    debezium_options: list[str] | None = None,
) -> CdcSettings:
    """Build CdcSettings from the flags (validated later with the rest of RelayConfig)."""
    return CdcSettings(
        slot=slot,
        publication=publication,
        table=table,
        debezium=debezium,
        heartbeat_interval=parse_duration(heartbeat, "CDC heartbeat interval"),
        takeover_ttl=parse_duration(takeover_ttl, "CDC takeover TTL"),
        linger=parse_duration(linger, "CDC linger"),
        snapshot=snapshot,
        debezium_options=_name_values(debezium_options or [], "--cdc-debezium-option"),
    )


def _name_values(pairs: list[str], flag: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{flag} takes name=value, got {pair!r}")
        options[name.strip()] = value.strip()
    return options
