"""Only connectors/ may import the broker clients; relay/ stays broker-agnostic."""

import ast
import subprocess
import sys
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


def logger_names(path: Path) -> list[str]:
    """The string names given to ``logging.getLogger`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
        and node.args and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]


def test_the_relays_loggers_are_named_by_their_module():
    """A logger named by hand drifts from its module when code moves; ``__name__`` does
    not. Only a library's own logger (pika's, to quieten it) is named by a string."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in ("relay", "connectors")
        for path in (ROOT / package).rglob("*.py")
        for name in logger_names(path)
        if name.split(".")[0] in {"outbox_relay", "relay", "connectors"}
    ]
    assert offenders == []


def branch_attributes(path: Path) -> set[str]:
    """The attribute names read in the conditions of ``path``'s branches."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tests = [node.test for node in ast.walk(tree) if isinstance(node, (ast.If, ast.IfExp))]
    tests += [node for node in ast.walk(tree) if isinstance(node, ast.Match)]
    return {
        node.attr for test in tests for node in ast.walk(test) if isinstance(node, ast.Attribute)
    }


def test_the_service_assembles_a_source_without_asking_which_mode():
    """Polling and CDC have one shape (relay.source): the service looks the mode's source
    up in SOURCES and never branches on the mode itself."""
    assert not branch_attributes(ROOT / "relay/service.py") & {"mode", "cdc", "cdc_table"}


def test_background_tasks_start_through_relay_tasks():
    """Start, cancel and gather are written once (relay.tasks); the drain's own task in
    the service and the CDC session's loops, which end together, are the only other
    places that create tasks."""
    allowed = {"relay/tasks.py", "relay/service.py", "relay/cdc/session.py"}
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("relay", "connectors")
        for path in (ROOT / package).rglob("*.py")
        if "create_task(" in path.read_text(encoding="utf-8")
        and str(path.relative_to(ROOT)) not in allowed
    ]
    assert offenders == []


def test_starting_the_command_imports_no_rich():
    """rich draws help and progress bars; a relay that starts (and every command that
    prints no help) does without its import time."""
    check = (
        "import sys, relay.cli.app\n"
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
