"""What PostgreSQL sees of a relay, for benchmarks.many_outboxes: its sessions by
``application_name``, the CPU of each backend (one per connection), the transactions
a database ends, and which outboxes hold a live lease."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.processes import CLOCK_TICKS


def relay_connections(dsn: str) -> dict[str, int]:
    """The relay's sessions, by application_name (every outbox-relay connection names its
    duty there)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE application_name LIKE 'outbox-relay%' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    return {name: int(count) for name, count in rows}


def backend_cpu(dsn: str) -> dict[int, tuple[str, float]]:
    """Every backend of the cluster: pid -> (application_name, CPU seconds so far). A
    backend serves one connection, so this splits PostgreSQL's CPU by who asked."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity"
        ).fetchall()
    found = {}
    for pid, name in rows:
        try:
            found[int(pid)] = (str(name), usage_cpu(int(pid)))
        except OSError:  # it ended meanwhile
            continue
    return found


def transactions(dsn: str) -> int:
    """Transactions the database has ended so far, every session's (the writers' too).
    Backends report theirs at most once a second, idle ones within 10 s: over a window of
    tens of seconds a rate of them is approximate."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def usage_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_by_name(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float
) -> dict[str, float]:
    """% of a core each application_name's backends spent between two snapshots (backends
    that came or went in between count from zero or not at all)."""
    spent: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        spent[name] = spent.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return {n: round(v / seconds * 100, 2) for n, v in sorted(spent.items()) if v > 0}


# Where a mode's live leases are: a bucket's (polling), the slot's (CDC).
LEASES = {
    "poll": ("bucket_leases", "expires_at"),
    "cdc": ("cdc_state", "lease_expires_at"),
}


def schemas_with_leases(dsn: str, schemas: list[str], mode: str = "poll") -> int | None:
    """How many of ``schemas`` hold a live lease; None when the outboxes have no lease
    table (a relay design without one: settling then rests on the connections)."""
    table, column = LEASES[mode]
    with psycopg.connect(dsn, autocommit=True) as conn:
        have = {
            row[0]
            for row in conn.execute(
                "SELECT table_schema FROM information_schema.tables"
                " WHERE table_name = %s AND table_schema = ANY(%s)",
                (table, schemas),
            )
        }
        if len(have) < len(schemas):
            return None
        parts = [
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} > now())")
            .format(sql.Identifier(s, table), sql.Identifier(column))
            for s in schemas
        ]  # fmt: skip
        query = sql.SQL("SELECT count(*) FILTER (WHERE e) FROM ({}) AS t(e)").format(
            sql.SQL(" UNION ALL ").join(parts)
        )
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0
