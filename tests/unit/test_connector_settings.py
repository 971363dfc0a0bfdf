"""A connector's declared settings: typed parsing, plain sentences, secrets never quoted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from connectors.kafka_settings import KafkaSettings
from connectors.rabbitmq_settings import RabbitMQSettings
from relay.connector_settings import ConnectorSettings, Passthrough, setting
from relay.errors import ConfigError

CANARY = "Canary-pw-5150"


@dataclass(frozen=True)
class SpoolSettings(ConnectorSettings):
    connector_name: ClassVar[str] = "spool"

    directory: str = setting("", help="Where the files go.", required=True)
    token: str = setting("", help="Signs each file.", secret=True)
    fsync: bool = setting(True, help="fsync each file.")
    max_files: int = setting(100, name="max.files", help="Files kept.")
    ratio: float = setting(0.5, help="A number.")

    def problems(self) -> list[str]:
        return [] if self.max_files > 0 else ["The spool's max.files must be at least 1."]


def test_options_become_typed_values_and_defaults_fill_the_rest():
    settings = SpoolSettings.parse(
        {"directory": "/spool", "fsync": "No", "max.files": " 7 ", "ratio": "0.25"}
    )
    assert settings == SpoolSettings(directory="/spool", fsync=False, max_files=7, ratio=0.25)
    assert SpoolSettings.parse({"directory": "d"}).token == ""


def test_every_problem_is_one_sentence_and_a_secret_is_never_quoted():
    options = {"token": CANARY, "fsync": "maybe", "max.files": "many", "ratio": "nan"}
    with pytest.raises(ConfigError) as caught:
        SpoolSettings.parse(options)
    message = str(caught.value)
    assert "The spool connector's fsync must be true or false, not 'maybe'." in message
    assert "The spool connector's max.files must be a whole number, not 'many'." in message
    assert "The spool connector's ratio must be a number, not 'nan'." in message
    assert "The spool connector needs a value for directory." in message
    assert CANARY not in message


def test_a_mistyped_secret_is_named_but_not_shown():
    @dataclass(frozen=True)
    class PinSettings(ConnectorSettings):
        connector_name: ClassVar[str] = "pin"
        pin: int = setting(0, help="A secret number.", secret=True)

    with pytest.raises(ConfigError, match=r"pin must be a whole number\.$") as caught:
        PinSettings.parse({"pin": CANARY})
    assert CANARY not in str(caught.value)


def test_an_unknown_name_is_refused_with_the_closest_one():
    with pytest.raises(ConfigError) as caught:
        SpoolSettings.parse({"directory": "d", "max_files": "3"})
    assert "has no setting 'max_files' (did you mean max.files?)" in str(caught.value)
    assert "outbox-relay connectors spool" in str(caught.value)


def test_the_connectors_own_validation_runs_after_parsing():
    with pytest.raises(ConfigError, match=r"max\.files must be at least 1"):
        SpoolSettings.parse({"directory": "d", "max.files": "0"})


def test_a_connector_without_settings_refuses_every_option():
    class Plain(ConnectorSettings):
        connector_name: ClassVar[str] = "plain"

    assert Plain.parse({}) == Plain()
    with pytest.raises(ConfigError, match="takes no settings, and 'x' was given"):
        Plain.parse({"x": "1"})


def test_undeclared_names_pass_through_when_the_connector_says_so():
    @dataclass(frozen=True)
    class Client(ConnectorSettings):
        connector_name: ClassVar[str] = "client"
        passthrough: ClassVar[Passthrough | None] = Passthrough(
            "client property", "https://example.org", frozenset({"api.key"})
        )
        host: str = setting("h", help="Host.")

    settings = Client.parse({"host": "x", "api.key": "k", "retries": "3"})
    assert settings.passed_through == {"api.key": "k", "retries": "3"}
    assert Client.is_secret("api.key") and Client.is_secret("db.password")
    assert not Client.is_secret("retries") and not Client.is_secret("host")


def test_a_setting_must_have_a_supported_type():
    @dataclass(frozen=True)
    class Broken(ConnectorSettings):
        when: bytes = setting(b"", help="Not a setting type.")

    with pytest.raises(TypeError, match="a str, int, float or bool"):
        Broken.declared()


def test_kafka_declares_the_relays_defaults_and_passes_librdkafka_through():
    settings = KafkaSettings.parse({"sasl.password": CANARY, "acks": "1"})
    config = settings.client_config(publish_timeout=2.5)
    assert config["bootstrap.servers"] == "localhost:9092"
    assert config["acks"] == "1"
    assert config["enable.idempotence"] == "true"
    assert config["message.timeout.ms"] == 2500
    assert config["sasl.password"] == CANARY
    assert KafkaSettings.parse({"message.timeout.ms": "9"}).client_config(
        publish_timeout=1
    )["message.timeout.ms"] == "9"


@pytest.mark.parametrize("servers", ["", " ", ",", " , "])
def test_kafka_refuses_empty_bootstrap_servers(servers):
    with pytest.raises(ConfigError, match="empty bootstrap servers"):
        KafkaSettings.parse({"bootstrap.servers": servers})


def test_kafka_refuses_an_empty_entry_in_the_bootstrap_servers():
    with pytest.raises(ConfigError, match="empty entry"):
        KafkaSettings.parse({"bootstrap.servers": "a:9092,,b:9092"})


@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        ("garbage", "must start with amqp:// or amqps://"),
        ("amqp:garbage", "names no host"),
        (f"amqp://guest:{CANARY}@[::1", "IPv6 address"),
        (f"amqp://guest:{CANARY}@::1]/", "IPv6 address"),
        ("", "The RabbitMQ URL is empty"),
        ("   ", "The RabbitMQ URL is empty"),
        ("amqp://", "names no host"),
        (f"amqp://guest:{CANARY}@/vhost", "names no host"),
        (f"amqp://guest:{CANARY}@rabbit:99999/", "port is not a number"),
        (f"amqp://guest:{CANARY}@rabbit:port/", "port is not a number"),
        (f"http://guest:{CANARY}@rabbit/", "must start with amqp://"),
        (f"amqp://guest:{CANARY}@rabbit/?ssl_options={{broken", "not valid"),
    ],
)
def test_rabbitmq_refuses_urls_that_name_no_broker(url, sentence):
    with pytest.raises(ConfigError, match=sentence) as caught:
        RabbitMQSettings.parse({"url": url})
    assert CANARY not in str(caught.value)
    error = caught.value  # not chained: a driver's text could hold the URL
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_rabbitmq_checks_the_exchange_name():
    with pytest.raises(ConfigError, match="exchange name 'a b' has characters AMQP forbids"):
        RabbitMQSettings.parse({"exchange": "a b"})
    assert RabbitMQSettings.parse({}).exchange == "outbox"
    assert RabbitMQSettings.is_secret("url") and not RabbitMQSettings.is_secret("exchange")
