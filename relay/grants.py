"""The least privileges of each outbox-relay role, as a SQL script to review and run.

``outbox-relay migrate --print-grants ROLE --mode MODE`` prints it. The relay never needs
superuser: the schema owner (who ran ``migrate``) grants a relay role exactly what its
mode uses, and nothing here creates or alters objects except, in CDC mode, the role's
REPLICATION attribute and the publication (which needs table ownership the relay role
should not have).
"""

from __future__ import annotations

from psycopg import sql

from relay.errors import ConfigError
from relay.sqlfiles import bind

GRANTS_SQL = "grants.sql"
# What each mode of role does, for the header of the script.
GRANT_MODES: dict[str, str] = {
    "poll": "runs `outbox-relay run` in polling mode and `outbox-relay status`",
    "cdc": "runs `outbox-relay run --mode cdc` (logical decoding) and `outbox-relay status`",
    "inbox": "consumes messages and deduplicates them in the inbox (relay.inbox)",
    "producer": "writes events with enqueue()/emit() in the application's transactions",
}
# Statements of a mode that only a superuser may run, printed after the transaction.
SUPERUSER_BLOCKS = {"cdc": "cdc_superuser"}
MAX_ROLE_NAME_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated


def check_role_name(role: str) -> None:
    """Refuse names PostgreSQL would truncate, reserve or could not store."""
    if not role or len(role.encode()) > MAX_ROLE_NAME_BYTES:
        raise ConfigError(f"the role name must have 1 to {MAX_ROLE_NAME_BYTES} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in role):
        raise ConfigError("the role name contains control characters")
    if role.lower() == "public" or role.startswith("pg_"):
        raise ConfigError(
            f"the role name {role!r} is reserved by PostgreSQL; create a role for the relay"
        )


def _block(name: str, *, schema: str, role: str, publication: str) -> sql.Composed:
    return bind(
        GRANTS_SQL,
        name,
        schema=sql.Identifier(schema),
        role=sql.Identifier(role),
        role_name=sql.Literal(role),
        publication=sql.Identifier(publication),
        publication_name=sql.Literal(publication),
    )


def render_grants(role: str, schema: str, mode: str, *, publication: str | None = None) -> str:
    """The GRANT script for ``role`` in ``mode`` on outbox ``schema``, in one transaction.

    ``publication`` (CDC only) defaults to the relay's derived name for ``schema``.
    """
    check_role_name(role)
    if mode not in GRANT_MODES:
        raise ConfigError(
            f"the grants mode {mode!r} is unknown; choose one of: {', '.join(GRANT_MODES)}"
        )
    if publication is None:
        from relay.cdc.settings import CdcSettings

        publication = CdcSettings().resolve(schema).publication
    names = {"schema": schema, "role": role, "publication": publication}
    body = [_block("connect", **names), _block(mode, **names)]
    header = [
        f"-- Privileges of a role that {GRANT_MODES[mode]}, on outbox schema {schema!r}.",
        "-- Run as the schema owner after `outbox-relay migrate`. The role itself is yours:",
        "--   CREATE ROLE <role> LOGIN PASSWORD '...';  (no SUPERUSER, CREATEDB or CREATEROLE)",
    ]
    if mode == "cdc":
        header.append(f"-- Publication: {publication} (pass the same --cdc-publication to run).")
    text = "\n".join(part.as_string(None).strip() + ";" for part in body)
    script = [*header, "BEGIN;", text, "COMMIT;"]
    if mode in SUPERUSER_BLOCKS:
        script.extend(_superuser_part(SUPERUSER_BLOCKS[mode], names))
    return "\n".join(script) + "\n"


def _superuser_part(block: str, names: dict[str, str]) -> list[str]:
    role = sql.Identifier(names["role"]).as_string(None)
    return [
        "",
        "-- NEEDS A SUPERUSER: PostgreSQL lets only a superuser give the REPLICATION",
        f"-- attribute. Run this part as one (Amazon RDS/Aurora: GRANT rds_replication TO {role};",
        "-- Cloud SQL: as cloudsqlsuperuser). It comes after the COMMIT above, so when the",
        "-- schema owner runs the whole script, only this statement fails and the grants stand.",
        _block(block, **names).as_string(None).strip() + ";",
    ]
