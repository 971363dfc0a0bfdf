"""The privileges ``outbox-relay run`` uses in each mode, checked before it starts.

A role without them would connect, then fail on its first claim with "permission denied
for schema outbox"; checked up front, the error names each missing privilege and the
command that prints the GRANTs. Each mode's list is a subset of what ``migrate
--print-grants`` grants for it (tests/unit/test_privileges.py holds the two together).
"""

from __future__ import annotations

from typing import Any

import psycopg

from relay.errors import PermanentError
from relay.sqlfiles import query

ALL_ROWS = ("SELECT", "INSERT", "UPDATE", "DELETE")
# table -> privileges, per mode; what each duty of a running relay executes.
RUN_PRIVILEGES: dict[str, dict[str, tuple[str, ...]]] = {
    "poll": {
        "schema_migrations": ("SELECT",),
        "messages": ("SELECT", "UPDATE", "DELETE"),  # claim, mark sent or delete on ack
        "dead_letters": ("SELECT", "INSERT", "UPDATE"),  # park, upserted
        "key_holds": ALL_ROWS,
        "relays": ALL_ROWS,
        "bucket_leases": ("SELECT", "UPDATE"),
    },
    "cdc": {
        "schema_migrations": ("SELECT",),
        "messages": ("SELECT", "UPDATE"),  # snapshot reads, mark sent
        "dead_letters": ("SELECT", "INSERT"),
        "cdc_state": ("SELECT", "INSERT", "UPDATE"),
        "relays": ALL_ROWS,
        "bucket_leases": ("SELECT", "UPDATE"),
    },
}
PRIVILEGES_SQL = "privileges.sql"


def missing_privileges(conn: psycopg.Connection[Any], schema: str, mode: str) -> list[str]:
    """``USAGE on schema outbox``, ``UPDATE on outbox.bucket_leases``, ...: what the
    connected role lacks to run in ``mode``. Tables that do not exist are not checked
    (``require_schema`` says to migrate)."""
    usage = conn.execute(query("schema_usage", schema, PRIVILEGES_SQL), {"schema": schema})
    row = usage.fetchone()
    if row is None or row[0] is None:
        return []
    if not row[0]:
        return [f"USAGE on schema {schema}"]
    pairs = [(table, p) for table, ps in RUN_PRIVILEGES[mode].items() for p in ps]
    params = {
        "schema": schema,
        "tables": [table for table, _ in pairs],
        "privileges": [privilege for _, privilege in pairs],
    }
    rows = conn.execute(query("missing_privileges", schema, PRIVILEGES_SQL), params).fetchall()
    return [f"{privilege} on {schema}.{table}" for table, privilege in rows]


def require_privileges(conn: psycopg.Connection[Any], schema: str, mode: str) -> None:
    """Raise PermanentError naming every privilege the role lacks to run in ``mode``."""
    missing = missing_privileges(conn, schema, mode)
    if not missing:
        return
    role = conn.info.user
    raise PermanentError(
        f"the role {role!r} lacks {', '.join(missing)}; as the owner of schema {schema!r}, "
        f"run what `outbox-relay migrate --print-grants {role} --mode {mode} "
        f"--schema {schema}` prints"
    )
