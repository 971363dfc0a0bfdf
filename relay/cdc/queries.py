"""The named queries of ``relay/sql/cdc.sql``.

Most take only ``{schema}`` (``relay.sqlfiles.query``); the few that name the captured
table or the publication get those as ``sql.Identifier`` too, never by formatting.
"""

from __future__ import annotations

import functools
from importlib import resources

from psycopg import sql

from relay.cdc.settings import TableName
from relay.sqlfiles import parse_named_blocks, query

FILENAME = "cdc.sql"


def cdc_query(name: str, schema: str) -> sql.Composed:
    """A CDC query with ``{schema}`` bound (cached)."""
    return query(name, schema, filename=FILENAME)


@functools.cache
def _templates() -> dict[str, str]:
    text = resources.files("relay.sql").joinpath(FILENAME).read_text(encoding="utf-8")
    return parse_named_blocks(text)


def cdc_query_with_names(
    name: str, schema: str, *, table: TableName, publication: str | None = None
) -> sql.Composed:
    """A CDC query that also names the captured table (and the publication)."""
    try:
        template = _templates()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {FILENAME}") from None
    names: dict[str, sql.Composable] = {
        "schema": sql.Identifier(schema),
        "table": sql.Identifier(table.schema, table.name),
    }
    if publication is not None:
        names["publication"] = sql.Identifier(publication)
    return sql.SQL(template).format(**names)
