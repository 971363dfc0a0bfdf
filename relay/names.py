"""Names the user configures for PostgreSQL objects (schema, publication, table).

We accept only plain, unquoted identifiers, so no name ever needs quoting tricks (they
still go through ``sql.Identifier``), and never one of PostgreSQL's own schemas. Every
check matches the whole string: a ``$`` anchor would let a trailing newline through.
"""

from __future__ import annotations

import re

from relay.errors import ConfigError

# NAMEDATALEN - 1: PostgreSQL silently truncates longer names.
MAX_IDENTIFIER_BYTES = 63
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
SYSTEM_SCHEMA_NAMES = ("information_schema", "pg_catalog", "pg_toast")
_PLAIN_RULE = "lowercase letters, digits and underscores, not starting with a digit"


def is_plain_identifier(name: str) -> bool:
    """A lowercase identifier PostgreSQL takes unquoted, at most 63 bytes."""
    return (
        len(name.encode("utf-8", "surrogatepass")) <= MAX_IDENTIFIER_BYTES
        and _PLAIN_IDENTIFIER.fullmatch(name) is not None
    )


def identifier_problem(name: str, what: str) -> str | None:
    """Why ``name`` cannot name a ``what`` (lowercase, no final period), or None."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_IDENTIFIER_BYTES:
        return (
            f"the {what} name {name!r} is {size} bytes long; PostgreSQL names are "
            f"at most {MAX_IDENTIFIER_BYTES} bytes"
        )
    if _PLAIN_IDENTIFIER.fullmatch(name) is None:
        return f"the {what} name {name!r} is not a plain identifier ({_PLAIN_RULE})"
    return None


def is_system_schema(name: str) -> bool:
    """information_schema and pg_* (pg_catalog, pg_toast, pg_temp_N, ...)."""
    return name == "information_schema" or name.startswith("pg_")


def schema_problem(name: str) -> str | None:
    """Why ``name`` cannot hold an outbox (lowercase, no final period), or None."""
    if problem := identifier_problem(name, "schema"):
        return problem
    if is_system_schema(name):
        return (
            f"the schema {name!r} is one of PostgreSQL's system schemas "
            f"({', '.join(SYSTEM_SCHEMA_NAMES)} and every pg_* schema); choose one of your own"
        )
    return None


def as_sentence(problem: str) -> str:
    """``problem`` with a capital first letter and a final period."""
    return problem[:1].upper() + problem[1:] + ("" if problem.endswith(".") else ".")


def check_schema_name(name: str) -> str:
    """``name`` if it can hold an outbox or inbox; ConfigError otherwise."""
    if problem := schema_problem(name):
        raise ConfigError(problem)
    return name
