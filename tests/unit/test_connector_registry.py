"""Finding a connector by name: unknown names, missing client libraries, and what the
application side imports (tests/e2e/test_plain_install.py checks a real plain install)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from relay.connector import connector_factory, missing_library
from relay.errors import ConfigError

BROKER_CLIENTS = ("confluent_kafka", "pika")


def test_the_application_side_imports_no_broker_client():
    code = (
        "import sys, relay, relay.inbox, relay.producer, relay.cli.app, relay.service\n"
        f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {BROKER_CLIENTS!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("connector", "client", "extra"),
    [("kafka", "confluent_kafka", "kafka"), ("rabbitmq", "pika", "rabbitmq")],
)
def test_a_missing_client_library_names_the_extra_that_brings_it(
    monkeypatch, connector, client, extra
):
    monkeypatch.setitem(sys.modules, client, None)  # None: "import of ... halted"
    for module in [m for m in sys.modules if m.startswith("connectors.")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ConfigError) as caught:
        connector_factory(connector)
    assert str(caught.value) == (
        f"the {connector} connector needs the Python module {client}, which is not "
        f"installed; install it with: pip install 'outbox-relay[{extra}]'"
    )


def test_a_third_party_connector_without_an_extra_names_the_module():
    entry_point = EntryPoint("spool", "spool_connector:Spool", "outbox_relay.connectors")
    error = ModuleNotFoundError("No module named 'boto3'", name="boto3")
    assert missing_library(entry_point, error) == (
        "the spool connector cannot be loaded: the Python module boto3 is not installed"
    )


def test_an_unknown_connector_lists_the_installed_ones():
    with pytest.raises(ConfigError, match="unknown connector 'nope'; installed connectors: "):
        connector_factory("nope")
