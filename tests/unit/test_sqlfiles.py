import pytest
from psycopg import sql

from relay.sqlfiles import parse_named_blocks, query


def test_blocks_are_split_by_name():
    blocks = parse_named_blocks("-- name: a\nSELECT 1;\n\n-- name: b\nSELECT 2;\n")
    assert blocks == {"a": "SELECT 1", "b": "SELECT 2"}


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="twice"):
        parse_named_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_schema_is_bound_as_an_identifier():
    composed = query("mark_sent", "my_outbox")
    assert isinstance(composed, sql.Composed)
    assert sql.Identifier("my_outbox") in list(composed)


def test_unknown_query_names_the_query():
    with pytest.raises(KeyError, match="no_such_query"):
        query("no_such_query", "outbox")
