"""Names of PostgreSQL objects the user configures: the whole string is checked (a `$`
anchor accepted a trailing newline), PostgreSQL's own schemas are refused, and a long
name is told its limit in bytes."""

from __future__ import annotations

import pytest

from relay.config import RelayConfig
from relay.errors import ConfigError
from relay.names import check_schema_name, is_plain_identifier, schema_problem


@pytest.mark.parametrize("name", ["name\n", "outbox\n", "\noutbox", "out\nbox", "a\r\n"])
def test_a_line_break_anywhere_is_not_a_plain_identifier(name):
    assert not is_plain_identifier(name)
    assert "not a plain identifier" in (schema_problem(name) or "")


@pytest.mark.parametrize(
    "name", ["information_schema", "pg_catalog", "pg_toast", "pg_temp_3", "pg_anything"]
)
def test_postgresqls_own_schemas_cannot_hold_the_outbox(name):
    with pytest.raises(ConfigError, match="one of PostgreSQL's system schemas"):
        check_schema_name(name)
    assert any("system schemas" in p for p in RelayConfig(dsn="x", schema=name).problems())


def test_a_long_name_is_told_the_limit_in_bytes():
    problem = schema_problem("a" * 70) or ""
    assert "70 bytes long" in problem and "at most 63 bytes" in problem
    assert schema_problem("a" * 63) is None


@pytest.mark.parametrize("name", ["outbox", "public", "billing_outbox", "_x1"])
def test_ordinary_names_pass(name):
    assert check_schema_name(name) == name
