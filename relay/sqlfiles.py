"""Named SQL queries, kept in .sql files and loaded once.

A file holds blocks introduced by ``-- name: some_query``. ``{schema}`` inside a block is
replaced by the quoted schema identifier (psycopg.sql.Identifier), never by string
formatting, so a configured name cannot inject SQL. Literal braces are doubled.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from psycopg import sql

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_named_blocks(text: str) -> dict[str, str]:
    """Split a .sql file into {name: statement}."""
    parts = _NAME_LINE.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = body.strip().rstrip(";")
    return blocks


@functools.cache
def _blocks(filename: str) -> dict[str, str]:
    text = resources.files("relay.sql").joinpath(filename).read_text(encoding="utf-8")
    return parse_named_blocks(text)


@functools.cache
def query(name: str, schema: str, filename: str = "queries.sql") -> sql.Composed:
    """The named query with ``{schema}`` bound to ``schema`` (cached per schema)."""
    try:
        template = _blocks(filename)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {filename}") from None
    return sql.SQL(template).format(schema=sql.Identifier(schema))
