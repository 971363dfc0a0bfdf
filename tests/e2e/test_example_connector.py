"""The example connector of docs/connectors.md, installed as a connector author's
package would be: it passes the conformance suite, and `outbox-relay run` finds it by
name and delivers through it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.cli import RelayProcess, clean_env, outbox_relay

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "webhook"
SUITE_TESTS = 8  # the tests of relay.testing.conformance.ConnectorConformance


def find_uv() -> str:
    """The uv that `make setup` used (PATH, else the one it bootstrapped)."""
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is needed to install the example connector; run `make setup` first")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example installed into a directory of its own (it goes on PYTHONPATH)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [find_uv(), "pip", "install", "--no-deps", "--target", str(target), str(EXAMPLE),
         "--python", sys.executable],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return target


def env_with(site: Path, **extra: str) -> dict[str, str]:
    return clean_env(PYTHONPATH=str(site), **extra)


def test_the_installed_example_passes_the_conformance_suite(installed, tmp_path):
    # The author's checkout without the connector's source: only the install provides it.
    checkout = tmp_path / "checkout"
    shutil.copytree(EXAMPLE / "tests", checkout / "tests")
    shutil.copy(EXAMPLE / "pyproject.toml", checkout)
    pytest_command = str(Path(sys.executable).with_name("pytest"))
    done = subprocess.run(
        [pytest_command, "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=checkout, env=env_with(installed), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{SUITE_TESTS} passed" in done.stdout, done.stdout
    assert "skipped" not in done.stdout


@pytest.fixture
def receiver(tmp_path):
    """The example's HTTP endpoint, recording into a JSON-lines file."""
    log = tmp_path / "received.jsonl"
    log.touch()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "tests" / "receiver.py"), "0", str(log)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    yield process, log
    process.kill()
    process.wait(10)
    process.stdin.close()
    process.stdout.close()


def read_records(log: Path, count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)  # a poll with a deadline: the file has no wait-for-lines


def test_the_relay_finds_the_installed_example_by_name_and_delivers_through_it(
    installed, receiver, db_dsn, tmp_path
):
    process, log = receiver
    port = int(process.stdout.readline().split()[1])  # "ready PORT"
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    with psycopg.connect(db_dsn) as conn:
        for n in range(30):
            conn.execute("SELECT outbox.enqueue('orders', %s, %s)", (f"k{n % 3}", f'{{"n": {n}}}'))
    url = f"http://127.0.0.1:{port}/events"
    relay = RelayProcess(
        ["--dsn", db_dsn, "--connector", "webhook", "--metrics-port", "0", "--lease-ttl", "4s",
         "--publish-timeout", "2s", "--connector-option", f"url={url}"],
        tmp_path / "relay.log", env=env_with(installed),
    )  # fmt: skip
    try:
        records = read_records(log, 30, timeout=30)
        assert len(records) == 30, relay.output()
        for key in ("k0", "k1", "k2"):
            ns = [json.loads(base64.b64decode(r["body"]))["n"] for r in records if r["key"] == key]
            assert ns == list(range(int(key[1]), 30, 3))  # each key in commit order
        assert relay.terminate() == 0
    finally:
        relay.stop()
