"""docs/connectors.md shows the example connector as it is: the code it prints is the
module the e2e tier installs and runs through the conformance suite."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "connectors.md"
EXAMPLE = ROOT / "docs" / "examples" / "webhook"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_prints_the_example_connector_whole():
    module = (EXAMPLE / "outbox_relay_webhook.py").read_text()
    assert module in python_blocks()


def test_the_harness_fixture_shown_is_the_examples():
    tests = (EXAMPLE / "tests" / "test_conformance.py").read_text()
    shown = [block for block in python_blocks() if "ConnectorConformance" in block]
    assert shown and all(block in tests for block in shown)


def test_the_entry_point_shown_is_the_examples():
    entry = re.search(r"```toml\n(.*?)```", PAGE.read_text(), re.S)
    assert entry is not None
    assert entry.group(1) in (EXAMPLE / "pyproject.toml").read_text()


def test_linked_files_exist():
    for target in re.findall(r"\]\(([^)#]+?)\)", PAGE.read_text()):
        assert (PAGE.parent / target).exists(), f"connectors.md links to missing {target}"
