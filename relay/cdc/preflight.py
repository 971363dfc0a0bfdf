"""``outbox-relay doctor``: check that the database can do what the relay needs, and say
in plain words what to change when it cannot.

``run_checks(dsn, config)`` checks the connection and the outbox schema for both modes,
and for CDC mode also the server settings, the role, free slots and senders, the
publication, the captured table and the slot; ``doctor`` also asks whether the relay
leading the slot now streams this outbox (``run`` does not: its outbox waits as a
standby then, and says so). It never changes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.cdc.queries import cdc_query
from relay.cdc.settings import CdcNames
from relay.cdc.slot_lock import slot_params
from relay.cdc.stream import replication_conninfo
from relay.config import RelayConfig
from relay.db import connection_failure
from relay.dsn import describe_dsn
from relay.errors import PermanentError, RelayError
from relay.migrations import require_schema

MIN_SERVER_VERSION = 140000  # pgoutput's binary and messages options
_OUTBOX_COLUMNS = ("id", "topic", "key", "payload", "payload_bytes", "headers")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def run_checks(dsn: str, config: RelayConfig, *, lead: bool = False) -> list[Check]:
    """Every check for ``config.mode``; the first failed connection ends the list.
    ``lead``: in CDC mode, also whether the slot's leader (if any) covers the outbox."""
    timeout = max(1, round(config.connect_timeout))
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=timeout)
    except psycopg.Error as exc:
        return [Check("database", False, str(connection_failure(dsn, exc)))]
    with conn:
        checks = [Check("database", True, f"connected to {describe_dsn(dsn)}")]
        checks.append(_schema_check(conn, config.schema))
        if config.mode == "cdc":
            checks.extend(_cdc_checks(conn, dsn, config))
            if lead and checks[1].ok and not config.cdc.problems(config.schema):
                checks.append(_lead_check(conn, config.cdc.resolve(config.schema)))
    return checks


def require_ready(config: RelayConfig) -> None:
    """Raise PermanentError naming every failed check (for ``run``'s preflight)."""
    failed = [check for check in run_checks(config.dsn, config) if not check.ok]
    if failed:
        raise PermanentError(" ".join(f"{check.name}: {check.detail}." for check in failed))


def _schema_check(conn: psycopg.Connection[Any], schema: str) -> Check:
    try:
        version = require_schema(conn, schema)
    except RelayError as exc:
        return Check("outbox schema", False, str(exc))
    return Check("outbox schema", True, f"schema {schema!r} is at version {version}")


def _cdc_checks(conn: psycopg.Connection[Any], dsn: str, config: RelayConfig) -> list[Check]:
    settings = config.cdc
    problems = settings.problems(config.schema)
    if problems:
        return [Check("cdc settings", False, " ".join(problems))]
    names = settings.resolve(config.schema)
    with conn.cursor(row_factory=dict_row) as cursor:
        server = cursor.execute(cdc_query("server_settings", config.schema)).fetchone() or {}
        slot = cursor.execute(cdc_query("slot_info", config.schema),
                              {"slot": names.slot}).fetchone()
    return [
        _version_check(conn.info.server_version),
        _wal_level_check(server),
        _privilege_check(server),
        _slot_capacity_check(server, slot, names),
        _sender_capacity_check(server),
        _table_check(conn, names),
        _publication_check(conn, names),
        _replication_connection_check(dsn, config),
    ]


def _version_check(version: int) -> Check:
    text = f"{version // 10000}.{version % 10000}"
    if version < MIN_SERVER_VERSION:
        return Check("server version", False,
                     f"PostgreSQL {text} is too old for CDC mode; it needs 14 or newer")
    return Check("server version", True, f"PostgreSQL {text}")


def _wal_level_check(server: dict[str, Any]) -> Check:
    level = server.get("wal_level")
    if level == "logical":
        return Check("wal_level", True, "wal_level is logical")
    return Check("wal_level", False,
                 f"wal_level is {level!r}; CDC reads the WAL through logical decoding, so set "
                 "wal_level = logical in postgresql.conf and restart PostgreSQL (on Amazon RDS "
                 "and Aurora: rds.logical_replication = 1 in the parameter group)")


def _privilege_check(server: dict[str, Any]) -> Check:
    role = server.get("role_name")
    if server.get("can_replicate"):
        return Check("replication privilege", True, f"role {role} may stream the WAL")
    return Check("replication privilege", False,
                 f"role {role} may not open replication connections; run "
                 f"ALTER ROLE {role} WITH REPLICATION (or use a role that has it)")


def _slot_capacity_check(
    server: dict[str, Any], slot: dict[str, Any] | None, names: CdcNames
) -> Check:
    if slot is not None:
        return _slot_health_check(slot, names, server.get("database"))
    free = int(server.get("max_slots", 0)) - int(server.get("used_slots", 0))
    if free > 0:
        return Check("replication slots", True,
                     f"slot {names.slot} will be created ({free} of "
                     f"{server.get('max_slots')} slots free)")
    return Check("replication slots", False,
                 f"all {server.get('max_slots')} replication slots are in use; raise "
                 "max_replication_slots (restart needed) or drop an unused slot")


def _slot_health_check(slot: dict[str, Any], names: CdcNames, database: object) -> Check:
    if slot["plugin"] != "pgoutput" or slot["database"] != database:
        return Check("replication slots", False,
                     f"slot {names.slot} exists but belongs to database {slot['database']!r} "
                     f"with plugin {slot['plugin']!r}; choose another name with --cdc-slot")
    if slot["wal_status"] == "lost":
        return Check("replication slots", False,
                     f"slot {names.slot} was invalidated (wal_status=lost); the relay "
                     "recreates it and republishes unconfirmed outbox rows on start")
    return Check("replication slots", True,
                 f"slot {names.slot} exists (wal_status {slot['wal_status']}, "
                 f"{slot['lag_bytes']} bytes of WAL not yet confirmed)")


def _sender_capacity_check(server: dict[str, Any]) -> Check:
    free = int(server.get("max_senders", 0)) - int(server.get("used_senders", 0))
    if free > 0:
        return Check("wal senders", True,
                     f"{free} of {server.get('max_senders')} WAL senders free")
    return Check("wal senders", False,
                 f"all {server.get('max_senders')} WAL senders are busy; raise max_wal_senders "
                 "(restart needed)")


def _table_check(conn: psycopg.Connection[Any], names: CdcNames) -> Check:
    rows = conn.execute(cdc_query("table_columns", names.schema),
                        {"table": str(names.table)}).fetchall()
    if not rows:
        return Check("captured table", False, f"table {names.table} does not exist")
    columns = {row[0] for row in rows}
    needed = names.routing.required_columns if names.routing is not None else _OUTBOX_COLUMNS
    missing = [name for name in needed if name not in columns]
    if missing:
        return Check("captured table", False,
                     f"table {names.table} lacks column {', '.join(missing)}")
    kind = "a Debezium outbox table" if names.debezium else "the outbox table"
    return Check("captured table", True, f"{names.table} is {kind}")


def _publication_check(conn: psycopg.Connection[Any], names: CdcNames) -> Check:
    rows = conn.execute(cdc_query("publication_tables", names.schema),
                        {"publication": names.publication}).fetchall()
    if not rows:
        return Check("publication", True,
                     f"publication {names.publication} will be created for inserts into "
                     f"{names.table} (needs CREATE on the database and ownership of the table)")
    tables = sorted(f"{schema}.{table}" for _, schema, table in rows if table)
    if str(names.table) in tables and rows[0][0]:
        return Check("publication", True,
                     f"publication {names.publication} publishes inserts into "
                     f"{', '.join(tables)}")
    if names.shared and rows[0][0]:
        return Check("publication", True,
                     f"{names.table} will be added to publication {names.publication}, which "
                     f"this database's outboxes share (it has {len(tables)} tables)")
    return Check("publication", False,
                 f"publication {names.publication} exists but does not publish inserts into "
                 f"{names.table} (it has: {', '.join(tables) or 'no tables'}); run "
                 f"ALTER PUBLICATION {names.publication} ADD TABLE {names.table}")


def _lead_check(conn: psycopg.Connection[Any], names: CdcNames) -> Check:
    """Relays sharing a slot must select the same outboxes: one led by a relay that does
    not select this outbox streams it for nobody (docs/multi-tenant.md)."""
    try:
        with conn.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(cdc_query("leadership_holder", names.schema),
                                 slot_params(names.slot)).fetchone() or {}
    except psycopg.errors.UndefinedTable:  # a schema older than CDC's: checked above
        return Check("slot lead", True, "no relay has streamed this outbox yet")
    lock_pid = row.get("lock_pid")
    if lock_pid is None:
        return Check("slot lead", True, f"no relay leads slot {names.slot} now")
    if row.get("leader_pid") == lock_pid:
        return Check("slot lead", True,
                     f"relay {row['leader_name']} leads slot {names.slot} and streams this outbox")
    return Check("slot lead", False,
                 f"the relay leading slot {names.slot} (its session has pid {lock_pid}) does not "
                 "select this outbox, so nobody streams it while that relay leads; relays that "
                 "share a slot must select the same outboxes of the database "
                 "(docs/multi-tenant.md)")


def _replication_connection_check(dsn: str, config: RelayConfig) -> Check:
    timeout = max(1, round(config.connect_timeout))
    try:
        with psycopg.connect(replication_conninfo(dsn), autocommit=True,
                             connect_timeout=timeout) as conn:
            conn.execute("IDENTIFY_SYSTEM")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check("replication connection", False,
                     f"a replication connection was refused ({first}); pg_hba.conf must "
                     "let this role connect to this database, and the role needs REPLICATION")
    return Check("replication connection", True, "a replication connection works")
