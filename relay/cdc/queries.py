"""The named queries of ``relay/sql/cdc.sql``.

Most take only ``{schema}``; the few that name the captured table or the publication get
those as ``sql.Identifier`` too, never by formatting.
"""

from __future__ import annotations

from psycopg import sql

from relay.cdc.settings import TableName
from relay.sqlfiles import bind, query

FILENAME = "cdc.sql"


def cdc_query(name: str, schema: str) -> sql.Composed:
    """A CDC query with ``{schema}`` bound (cached)."""
    return query(name, schema, filename=FILENAME)


def cdc_query_with_names(
    name: str, schema: str, *, table: TableName, publication: str | None = None
) -> sql.Composed:
    """A CDC query that also names the captured table (and the publication)."""
    names: dict[str, sql.Composable] = {
        "schema": sql.Identifier(schema),
        "table": sql.Identifier(table.schema, table.name),
    }
    if publication is not None:
        names["publication"] = sql.Identifier(publication)
    return bind(FILENAME, name, **names)
