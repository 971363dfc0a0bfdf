"""Which outboxes one relay process drains: every (database, schema) pair it was given.

``--dsn`` and ``--schema`` may each be given several times, and ``--schema-pattern``
adds every schema of each database whose name matches and which holds an outbox. An
outbox is named in logs, metrics and ``/readyz`` by its database's name and its schema:
bounded labels that never carry a DSN (docs/multi-tenant.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from relay.names import schema_problem
from relay.sqlfiles import bind

# The environment variables that hold lists: schemas are split at commas and whitespace;
# DSNs one per line, or several URLs on a line (a key=value DSN has spaces of its own,
# and a URL may hold commas between its hosts, so neither splits a DSN).
_SCHEMA_SEPARATORS = re.compile(r"[\s,]+")
_URL = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class OutboxAddress:
    """One outbox: a database (its DSN, and the name it is shown by) and a schema."""

    database: str  # the label: the database's name, with its host when two share a name
    schema: str
    dsn: str  # never shown: it may hold a password

    @property
    def name(self) -> str:
        return f"{self.database}/{self.schema}"

    def __repr__(self) -> str:  # a DSN may hold a password: never in a repr
        return f"OutboxAddress({self.name!r})"


def split_schemas(text: str) -> list[str]:
    return [part for part in _SCHEMA_SEPARATORS.split(text) if part]


def split_dsns(text: str) -> list[str]:
    """DSNs one per line; a line of URLs alone may hold several, separated by spaces."""
    found: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        found.extend(words if all(_URL.match(word) for word in words) else [line])
    return found


def database_labels(dsns: Sequence[str]) -> list[str]:
    """Each DSN's label: its database name, or ``host:port/name`` where two DSNs name
    databases of the same name on different servers."""
    parts = [_database_parts(dsn) for dsn in dsns]
    names = [name for _, name in parts]
    return [f"{server}/{name}" if names.count(name) > 1 else name for server, name in parts]


def _database_parts(dsn: str) -> tuple[str, str]:
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # validated elsewhere: here only a label is wanted
        return "?", "?"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    name = str(params.get("dbname") or params.get("user") or "postgres")
    return f"{host}:{port}", name


def outbox_addresses(
    dsns: Sequence[str], schemas_by_dsn: Iterable[Sequence[str]]
) -> list[OutboxAddress]:
    """Every (database, schema) pair, in the order given, each once."""
    labels = database_labels(dsns)
    found = [
        OutboxAddress(label, schema, dsn)
        for dsn, label, schemas in zip(dsns, labels, schemas_by_dsn, strict=True)
        for schema in dict.fromkeys(schemas)
    ]
    return found


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot select schemas, or None."""
    if not pattern.strip():
        return "the schema pattern is empty; give a LIKE pattern such as 'tenant_%'"
    if "\x00" in pattern or len(pattern) > 200:
        return "the schema pattern must be a LIKE pattern of at most 200 characters"
    return None


def schemas_like(conn: psycopg.Connection[Any], pattern: str) -> list[str]:
    """The schemas of ``conn``'s database that match ``pattern`` and hold an outbox."""
    rows = conn.execute(bind("outboxes.sql", "schemas_like"), {"pattern": pattern})
    return [str(row[0]) for row in rows if schema_problem(str(row[0])) is None]


async def schemas_like_async(conn: psycopg.AsyncConnection[Any], pattern: str) -> list[str]:
    cursor = await conn.execute(bind("outboxes.sql", "schemas_like"), {"pattern": pattern})
    return [str(row[0]) for row in await cursor.fetchall() if schema_problem(str(row[0])) is None]


def existing_schemas_like(conn: psycopg.Connection[Any], pattern: str) -> list[str]:
    """The schemas of ``conn``'s database that match ``pattern``, holding an outbox or
    not yet (``migrate --schema-pattern`` creates it); names the relay cannot take (not
    plain identifiers) are left out."""
    rows = conn.execute(bind("outboxes.sql", "schemas_existing_like"), {"pattern": pattern})
    return [str(row[0]) for row in rows if schema_problem(str(row[0])) is None]
