"""Every configurable name (schema, exchange, slot, publication, table) is validated
before it is used: walking every command's options, a hostile value gets a usage error
(exit 2) and never reaches PostgreSQL or the broker. Inside SQL the names also go
through psycopg.sql.Identifier; this is the first line."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from relay.cli.app import app

CLI = typer.main.get_command(app)
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=1"
IDENTIFIERS = ["x; DROP TABLE t", 'a"b', "Outbox", "1st", "x" * 64, "a b", "é", ""]
HOSTILE = {
    "schema": [*IDENTIFIERS, "outbox\n", "information_schema", "pg_catalog", "pg_toast"],
    # slot names may start with a digit; an empty slot or publication means the default
    "cdc_slot": [v for v in IDENTIFIERS if v not in ("1st", "")],
    "cdc_publication": [v for v in IDENTIFIERS if v],
    "cdc_table": ["a.b; DROP TABLE t", "messages", "A.b", "a.b.c", 'a."b"', ""],
    "amqp_exchange": ["a b", 'x;"', "é", "x" * 256, ""],
    # a LIKE pattern goes to PostgreSQL as a bound parameter: only its shape is refused
    "schema_pattern": ["", " ", "x" * 201, "tenant_\x00"],
}
# Words that make an option a name: a new one must be added to HOSTILE above.
NAME_WORDS = ("schema", "slot", "publication", "exchange", "table", "channel", "queue")
# Commands that only pass these names to PostgreSQL as bound parameters (safe), but do
# not validate them before connecting. strict: fixing them makes this list fail.
VALIDATED_AFTER_CONNECTING: set[tuple[tuple[str, ...], str]] = set()
EXTRA_ARGS = {
    ("dead-letters", "show"): ["00000000-0000-0000-0000-000000000000"],
    ("dead-letters", "retry"): ["--all"],
    ("dead-letters", "drop"): ["--all"],
}


def commands(group=CLI, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def name_options():
    for path, command in commands():
        names = {p.name: p for p in command.params}
        for name, param in names.items():
            if any(word in name for word in NAME_WORDS):
                yield path, name, param.opts[0], "dsn" in names, "mode" in names


NAME_OPTIONS = list(name_options())


def test_every_name_option_is_walked():
    assert {name for _, name, *_ in NAME_OPTIONS} <= set(HOSTILE)
    assert len(NAME_OPTIONS) >= 8  # schema on most commands, the CDC names, the exchange


@pytest.mark.parametrize(
    ("path", "flag", "value", "has_dsn", "has_mode"),
    [
        (path, flag, value, has_dsn, has_mode)
        for path, name, flag, has_dsn, has_mode in NAME_OPTIONS
        for value in HOSTILE[name]
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v) if isinstance(v, tuple) else None,
)
def test_a_hostile_name_is_refused_before_anything_connects(
    path, flag, value, has_dsn, has_mode, monkeypatch, request
):
    if (path, flag) in VALIDATED_AFTER_CONNECTING:
        request.applymarker(
            pytest.mark.xfail(
                reason="checked only after connecting (a bound parameter)", strict=True
            )
        )
    for key in [k for k in __import__("os").environ if k.startswith("OUTBOX_RELAY_")]:
        monkeypatch.delenv(key)
    args = [*path, flag, value, *EXTRA_ARGS.get(path, [])]
    if has_dsn:
        args += ["--dsn", UNREACHABLE]
    if has_mode and flag.startswith("--cdc"):
        args += ["--mode", "cdc"]
    if path == ("run",):
        # a connector's own names are checked by that connector's settings
        args += ["--connector", "rabbitmq" if flag.startswith("--amqp") else "memory"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "cannot connect" not in result.output
    assert "Traceback" not in result.output
