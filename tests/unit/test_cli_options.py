"""Every option of every command, walked: each has an environment variable shown in
--help, a metavar that means something, and a single-value option given twice is a usage
error (exit 2) instead of the last one silently winning."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.core import TyperOption
from typer.testing import CliRunner

from relay.cli.app import app

CLI = typer.main.get_command(app)
# The only options without a variable: they act at once and set nothing.
NO_VARIABLE = {"--help", "--version"}


def commands(group=CLI, path=()):
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from commands(command, (*path, name))


def options():
    for path, command in commands():
        for param in command.params:
            if isinstance(param, TyperOption):
                yield path, param


OPTIONS = list(options())
LEAF_COMMANDS = [(path, c) for path, c in commands() if not hasattr(c, "commands")]


def option_id(value):
    return " ".join(value) if isinstance(value, tuple) else getattr(value, "opts", [None])[0]


def test_the_walk_sees_every_command():
    names = {" ".join(path) for path, _ in LEAF_COMMANDS}
    assert names >= {"migrate", "status", "doctor", "run", "inbox purge", "dead-letters list",
                     "dead-letters show", "dead-letters retry", "dead-letters drop"}  # fmt: skip
    assert len(OPTIONS) >= 80


@pytest.mark.parametrize(("path", "option"), OPTIONS, ids=option_id)
def test_every_option_has_an_environment_variable_shown_in_help(path, option):
    if option.opts[0] in NO_VARIABLE:
        return
    assert isinstance(option.envvar, str) and option.envvar.startswith("OUTBOX_RELAY_")
    assert option.show_envvar


@pytest.mark.parametrize(("path", "command"), LEAF_COMMANDS, ids=option_id)
def test_help_lists_each_variable_and_no_python_type(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, color=False)
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(bool|str|int|float|list\[str\])>", result.output), result.output
    joined = re.sub(r"[\s│]+", "", result.output)  # a long name may wrap in the box
    for param in command.params:
        if isinstance(param, TyperOption) and param.opts[0] not in NO_VARIABLE:
            assert param.envvar in joined


def test_run_help_keeps_the_whole_default_of_a_long_value():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "80"}, color=False)
    joined = re.sub(r"[\s│]+", "", result.output)
    # The shorthand shows its connector's default, with the password masked.
    assert "defaultamqp://guest:***@localhost:5672/%2F" in joined
    assert "…" not in result.output


def test_connector_help_names_the_installed_connectors():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}, color=False)
    line = next(li for li in result.output.splitlines() if "--connector" in li)
    assert "an installed one (`outbox-relay connectors` lists them)" in line


def value_for(option):
    return [] if option.is_flag else ["1"]


SINGLE_VALUE = [(p, o) for p, o in OPTIONS if not o.multiple and o.opts[0] not in NO_VARIABLE]


@pytest.mark.parametrize(("path", "option"), SINGLE_VALUE, ids=option_id)
def test_a_single_value_option_given_twice_is_a_usage_error(path, option, monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("OUTBOX_RELAY_")]:
        monkeypatch.delenv(key)
    once = [option.opts[-1], *value_for(option)]
    result = CliRunner().invoke(app, [*path, *once, *once], color=False)
    assert result.exit_code == 2, result.output
    assert f"{option.opts[0]} given twice" in result.output


def test_two_spellings_of_one_option_are_also_twice():
    result = CliRunner().invoke(app, ["migrate", "--print", "--dry-run"], color=False)
    assert result.exit_code == 2 and "--print given twice" in result.output


def test_a_list_option_may_be_repeated():
    args = ["run", "--kafka-option", "a=1", "--kafka-option", "b=2", "--batch-size", "0"]
    result = CliRunner().invoke(app, [*args, "--dsn", "postgresql://localhost/x"], color=False)
    assert result.exit_code == 2 and "batch size" in result.output  # got past parsing


def test_the_flag_wins_over_its_variable_and_that_is_not_twice(monkeypatch):
    monkeypatch.setenv("OUTBOX_RELAY_SCHEMA", "from_env")
    result = CliRunner().invoke(app, ["migrate", "--print", "--schema", "from_flag"])
    assert result.exit_code == 0, result.output
    assert '"from_flag"' in result.output and "from_env" not in result.output
