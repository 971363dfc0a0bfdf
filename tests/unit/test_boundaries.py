"""Only connectors/ may import the broker clients; relay/ stays broker-agnostic."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROKER_CLIENTS = {"confluent_kafka", "pika", "aiokafka", "aio_pika"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_connectors_import_broker_clients():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "relay").rglob("*.py")
        if imported_modules(path) & BROKER_CLIENTS
    ]
    assert offenders == []


def test_only_the_conformance_suite_imports_pytest():
    """Importing the relay never needs pytest: it is the connector author's test dependency."""
    allowed = {"relay/testing/conformance.py"}
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("relay", "connectors")
        for path in (ROOT / package).rglob("*.py")
        if imported_modules(path) & {"pytest", "_pytest"}
        and str(path.relative_to(ROOT)) not in allowed
    ]
    assert offenders == []


def calls_wait_for(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.Attribute) and node.attr == "wait_for"
        for node in ast.walk(tree)
    )


def test_no_asyncio_wait_for_in_the_relay_or_the_connectors():
    """On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives as the
    awaited thing completes; waits go through relay.tasks instead."""
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("relay", "connectors")
        for path in (ROOT / package).rglob("*.py")
        if calls_wait_for(path)
    ]
    assert offenders == []
