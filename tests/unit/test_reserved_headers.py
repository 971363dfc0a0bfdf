"""The reserved header names: one rule, written in Python (relay/headers.py) and in SQL
(the path in schema/0009_writer_api.sql that the table's CHECK and emit() use)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.headers import is_reserved, reserved_header_message

MIGRATION = Path(__file__).resolve().parents[2] / "schema" / "0009_writer_api.sql"
NAMES = [
    *("id", "ID", "key", "Key", "message_id", "MESSAGE_ID", "content_type", "content-type"),
    *("Content-Type", "ce_type", "CE_ID", "ce-source", "cloudEvents_id", "cloudEvents:type"),
    *("outbox_relay_attempt", "outbox-relay-hop", "ce_", "id\n"),
    *("ids", "keys", "message", "message-id", "content", "contenttype", "trace", "traceparent"),
    *("x-id", "kid", "cex", "ce", "cloudevents", "outbox", "outbox_relay", "my_ce_header", ""),
]


def sql_paths() -> list[str]:
    return re.findall(r'like_regex "([^"]+)" flag "i"', MIGRATION.read_text())


def test_the_migration_spells_the_rule_once():
    assert len(set(sql_paths())) == 1


@pytest.mark.parametrize("name", NAMES)
def test_sql_and_python_reserve_the_same_names(name):
    (pattern,) = set(sql_paths())
    # PostgreSQL's like_regex is an ARE whose $ matches only at the very end; Python's $
    # also matches before a final newline, so it reads the pattern with \Z instead.
    python_pattern = pattern.replace("$", r"\Z")
    assert bool(re.search(python_pattern, name, re.IGNORECASE)) == is_reserved(name)


def test_reserved_names_are_the_ones_the_connectors_set_and_the_cloudevents_ones():
    assert [n for n in NAMES if is_reserved(n)] == NAMES[:17]


def test_sql_and_python_say_the_same_sentence():
    sentence = reserved_header_message("x").split(" is reserved", 1)[1]
    joined = re.sub(r"'\s*\n\s*'", "", MIGRATION.read_text())  # adjacent SQL literals
    assert f"'the header name % is reserved{sentence}'" in joined
