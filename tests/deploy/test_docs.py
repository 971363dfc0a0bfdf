"""The deployment and security docs: their `outbox-relay ...` commands parse with the
real CLI, and the files they link to exist."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.deploy.contract import ROOT, parse_args

DOCS = [
    ROOT / "docs" / name
    for name in ("security.md", "deploying.md", "connector-settings.md", "cdc.md", "formats.md")
] + [ROOT / "README.md"]


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
