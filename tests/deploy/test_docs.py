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
