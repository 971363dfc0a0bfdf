"""How `run` gathers a connector's options from flags, variables and files (parsed by the
real command's parameters; tests/e2e/test_connector_options.py runs the command)."""

from __future__ import annotations

import os

import pytest
import typer.main

from relay.cli.app import app
from relay.cli.connector_options import gather_connector_options
from relay.errors import ConfigError

RUN = typer.main.get_command(app).commands["run"]


@pytest.fixture(autouse=True)
def no_relay_variables(monkeypatch):
    for name in [k for k in os.environ if k.startswith("OUTBOX_RELAY_")]:
        monkeypatch.delenv(name)


def gathered(*args: str) -> dict[str, str]:
    return gather_connector_options(RUN.make_context("run", ["--dsn", "x", *args]))


def private(path, text, mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_the_variable_holds_one_option_per_line(monkeypatch):
    monkeypatch.setenv(
        "OUTBOX_RELAY_CONNECTOR_OPTION",
        "sasl.oauthbearer.config=principal=relay scope=a,b\n# a comment\n\n  acks = all \n",
    )
    assert gathered() == {"sasl.oauthbearer.config": "principal=relay scope=a,b", "acks": "all"}


def test_flags_replace_the_variable_as_for_every_option(monkeypatch):
    monkeypatch.setenv("OUTBOX_RELAY_CONNECTOR_OPTION", "acks=all")
    assert gathered("--connector-option", "linger.ms=5") == {"linger.ms": "5"}


def test_files_flags_and_shorthands_add_up(tmp_path):
    secrets = private(tmp_path / "secrets", "sasl.password=pw\n")
    options = gathered(
        "--connector-option-file", secrets,
        "--connector-option", "acks=1",
        "--kafka-bootstrap", "k:9092",
    )  # fmt: skip
    assert options == {"sasl.password": "pw", "acks": "1", "bootstrap.servers": "k:9092"}


def test_a_setting_from_a_file_and_a_flag_is_an_error_naming_both(tmp_path):
    secrets = private(tmp_path / "secrets", "sasl.password=pw\n")
    with pytest.raises(
        ConfigError,
        match=r"given twice, by --connector-option-file .*secrets "
        r"and by --connector-option; give it once",
    ):
        gathered("--connector-option-file", secrets, "--connector-option", "sasl.password=x")


def test_the_kafka_shorthands_keep_their_documented_precedence(tmp_path):
    kafka_file = tmp_path / "kafka.properties"
    kafka_file.write_text("acks=1\nsasl.username=relay\n")
    options = gathered("--kafka-option-file", str(kafka_file), "--kafka-option", "acks=all")
    assert options == {"acks": "all", "sasl.username": "relay"}


def test_the_amqp_url_from_a_file_or_a_flag_not_both(tmp_path):
    url_file = tmp_path / "amqp-url"
    url_file.write_text("amqp://relay:pw@rabbit/\n")
    rabbit = ("--connector", "rabbitmq")
    assert gathered(*rabbit, "--amqp-url-file", str(url_file)) == {"url": "amqp://relay:pw@rabbit/"}
    with pytest.raises(ConfigError, match="give either --amqp-url or --amqp-url-file, not both"):
        gathered(*rabbit, "--amqp-url", "amqp://h/", "--amqp-url-file", str(url_file))


def test_a_shorthand_variable_of_another_connector_is_left_alone(monkeypatch):
    monkeypatch.setenv("OUTBOX_RELAY_AMQP_URL", "amqp://h/")
    monkeypatch.setenv("OUTBOX_RELAY_AMQP_EXCHANGE", "orders")
    assert gathered("--connector", "kafka") == {}
    assert gathered("--connector", "rabbitmq") == {"url": "amqp://h/", "exchange": "orders"}
    with pytest.raises(ConfigError, match="--amqp-exchange is a setting of the rabbitmq"):
        gathered("--connector", "kafka", "--amqp-exchange", "x")


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o620, 0o602])
def test_an_option_file_others_can_read_or_change_is_refused(tmp_path, mode):
    secrets = private(tmp_path / "secrets", "sasl.password=pw\n", mode)
    with pytest.raises(ConfigError, match=f"other users \\(mode {mode:04o}\\)"):
        gathered("--connector-option-file", secrets)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a file owned by root")
@pytest.mark.parametrize("mode", [0o640, 0o440])
def test_a_root_owned_option_file_may_be_readable_by_its_group(tmp_path, mode):
    """What a Kubernetes Secret volume with fsGroup and defaultMode 0440 looks like."""
    secrets = private(tmp_path / "secrets", "sasl.password=pw\n", mode)
    assert gathered("--connector-option-file", secrets) == {"sasl.password": "pw"}
