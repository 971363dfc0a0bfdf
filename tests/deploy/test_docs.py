"""The docs: their `outbox-relay ...` commands parse with the real CLI, the files they
link to exist, and docs/configuration.md lists every option of every command."""

from __future__ import annotations

import re
import shlex

import pytest
from typer.core import TyperOption

from tests.deploy.contract import CLI, ROOT, parse_args

DOCS = sorted((ROOT / "docs").glob("*.md")) + [
    ROOT / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")
]
CONFIGURATION = ROOT / "docs" / "configuration.md"
# A row of its tables: | `--flag`[, `--alias`] | `OUTBOX_RELAY_VARIABLE` | default | meaning |
OPTION_ROW = re.compile(r"^\| `(--[a-z-]+)`[^|]*\| `(OUTBOX_RELAY_[A-Z_]+)` \| ([^|]*)\|", re.M)


def commands_in(text: str) -> list[str]:
    """``outbox-relay ...`` command lines inside fenced code blocks, continuations joined."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("outbox-relay "):
                found.append(line.split("|")[0])
    return found


COMMANDS = [(doc.name, line) for doc in DOCS for line in commands_in(doc.read_text())]


def test_the_docs_show_commands():
    assert len([c for doc, c in COMMANDS if doc == "security.md"]) >= 5


@pytest.mark.parametrize(("doc", "line"), COMMANDS)
def test_every_documented_command_parses(doc, line):
    args = shlex.split(line, comments=True)[1:]
    parse_args(args)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_linked_files_exist(doc):
    for target in re.findall(r"\]\(([^)#]+?)\)", doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_the_quickstart_installs_from_a_checkout_until_a_release_exists():
    """`pip install outbox-relay` fails: the package is on no index yet."""
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    install = re.findall(r"```bash\n(.*?)```", quickstart, re.S)[0]
    lines = [line.split("#")[0].strip() for line in install.splitlines()]
    assert "pip install outbox-relay" not in install
    commands = {line.replace("'.[kafka]'", ".") for line in lines}  # the extra, or none
    assert {"pip install .", "uv tool install .", "uv build"} <= commands


def test_the_readme_states_which_of_flag_variable_and_default_wins():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "A flag wins over its variable, and the variable over the default" in readme
    assert "docs/cli-errors.md" in readme


def cli_options(group=CLI, path=()):
    """(command path, flag, variable, default) of every option but --help and --version."""
    for name, command in getattr(group, "commands", {}).items():
        yield from cli_options(command, (*path, name))
    for param in getattr(group, "params", []):
        if isinstance(param, TyperOption) and param.envvar:
            yield " ".join(path), param.opts[0], param.envvar, param.default


OPTIONS = list(cli_options())


def documented_options() -> dict[tuple[str, str], list[str]]:
    rows: dict[tuple[str, str], list[str]] = {}
    for flag, variable, default in OPTION_ROW.findall(CONFIGURATION.read_text()):
        rows.setdefault((flag, variable), []).append(default)
    return rows


def test_the_walk_sees_the_options():
    paths = {path for path, *_ in OPTIONS}
    assert len(OPTIONS) >= 80 and {"run", "migrate", "dead-letters drop"} <= paths


@pytest.mark.parametrize(("path", "flag", "variable", "default"), OPTIONS,
                         ids=lambda v: v if isinstance(v, str) else None)  # fmt: skip
def test_the_configuration_page_lists_every_option(path, flag, variable, default):
    """Its variable beside it, and its default where the command has a plain one."""
    defaults = documented_options().get((flag, variable))
    assert defaults, f"docs/configuration.md has no row for {flag} ({variable}) of {path}"
    if isinstance(default, (str, int)) and not isinstance(default, bool) and default != "":
        assert any(f"`{default}`" in cell for cell in defaults), (
            f"docs/configuration.md does not give {flag}'s default, {default}"
        )


def test_the_configuration_page_lists_no_option_the_command_lacks():
    real = {(flag, variable) for _, flag, variable, _ in OPTIONS}
    assert set(documented_options()) - real == set()


def test_the_readme_stays_a_users_page():
    """README is what a user reads first: short, and without dated figures or runs, which
    go stale (figures live in docs/performance.md, history in benchmarks/README.md)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text)
