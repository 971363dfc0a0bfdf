"""Every SQL file the relay runs, found one way and loaded once.

``relay/sql/*.sql`` hold named queries: blocks introduced by ``-- name: some_query``.
``{schema}`` (and any other name a block uses) is bound as a quoted identifier or literal
through psycopg.sql, never by string formatting, so a configured name cannot inject SQL.
Literal braces are doubled. The migrations (``schema/``) are found the same way.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from psycopg import sql

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@functools.cache
def sql_directory(name: str) -> Traversable:
    """``relay/<name>`` as installed: ``sql`` is part of the package, and the wheel
    carries the migrations (the checkout's top-level ``schema/``) as ``relay/schema``.
    In a source checkout ``schema/`` stands beside the package instead."""
    installed = resources.files("relay").joinpath(name)
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"the outbox-relay {name} directory is missing from this install")


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
def named_blocks(filename: str) -> dict[str, str]:
    """The named blocks of ``relay/sql/<filename>``."""
    text = sql_directory("sql").joinpath(filename).read_text(encoding="utf-8")
    return parse_named_blocks(text)


def bind(filename: str, name: str, **names: sql.Composable) -> sql.Composed:
    """The block ``name`` of ``filename`` with its placeholders bound to ``names``."""
    try:
        template = named_blocks(filename)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {filename}") from None
    return sql.SQL(template).format(**names)


@functools.cache
def query(name: str, schema: str, filename: str = "queries.sql") -> sql.Composed:
    """The named query with ``{schema}`` bound to ``schema`` (cached per schema)."""
    return bind(filename, name, schema=sql.Identifier(schema))
