"""`pip install outbox-relay` without extras: enqueue and the inbox work without either
broker's client, and the relay command says which extra a connector needs."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from tests.support.cli import user_env
from tests.support.installs import ROOT, fresh_venv, run_uv

pytestmark = pytest.mark.e2e
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing"
BROKER_CLIENTS = ("confluent_kafka", "pika")
APPLICATION_SIDE = """
import importlib.util, sys
import relay, relay.inbox, relay.producer
from relay import enqueue, enqueue_async
from relay.inbox import AsyncInbox, Inbox, purge_inbox
clients = [m for m in {clients!r} if importlib.util.find_spec(m) is not None]
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {clients!r})
print(clients, loaded)
"""


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return fresh_venv(tmp_path_factory.mktemp("plain") / "venv", str(ROOT))


def run(bin_dir, *args):
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=user_env(),
        check=False,
    )


def test_a_plain_install_enqueues_and_dedupes_without_broker_clients(plain):
    code = APPLICATION_SIDE.format(clients=BROKER_CLIENTS)
    result = run(plain, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] []"  # not installed, not imported


@pytest.mark.parametrize(
    ("connector", "module"), [("kafka", "confluent_kafka"), ("rabbitmq", "pika")]
)
def test_the_relay_says_which_extra_a_connector_needs(plain, connector, module):
    result = run(plain, "outbox-relay", "run", "--dsn", UNREACHABLE, "--connector", connector)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"outbox-relay: error: the {connector} connector needs the Python module {module}, "
        f"which is not installed; install it with: pip install 'outbox-relay[{connector}]'"
    ]


def test_connectors_lists_what_is_missing(plain):
    result = run(plain, "outbox-relay", "connectors")
    assert result.returncode == 0, result.stderr
    assert "pip install 'outbox-relay[kafka]'" in result.stdout
    assert "pip install 'outbox-relay[rabbitmq]'" in result.stdout


def test_an_extra_brings_its_connector_only(tmp_path):
    bin_dir = fresh_venv(tmp_path / "venv", f"{ROOT}[rabbitmq]")
    listing = run(bin_dir, "outbox-relay", "connectors").stdout
    assert "rabbitmq     Publishes outbox batches to a RabbitMQ topic exchange" in listing
    assert "pip install 'outbox-relay[kafka]'" in listing


def test_the_wheel_holds_the_product_only(tmp_path):
    """Test services, fakes and the test-only connector stay out of what users install:
    the wheel has relay/ (with the migrations) and connectors/, and names no connector
    that sends nowhere."""
    run_uv("build", "--wheel", "--quiet", "--out-dir", str(tmp_path), str(ROOT), timeout=300)
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(
            archive.read(name).decode() for name in names if name.endswith("entry_points.txt")
        )
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"relay", "connectors"}
    assert any(name.startswith("relay/schema/") and name.endswith(".sql") for name in names)
    assert not [name for name in names if "tests" in name.split("/") or "support" in name]
    assert "kafka" in entry_points and "memory" not in entry_points
