"""Secrets from files: exact content, clear errors that never quote the secret."""

import logging
import os
import sys

import pytest

from connectors.kafka_settings import KafkaSettings
from connectors.rabbitmq_settings import RabbitMQSettings
from relay.errors import ConfigError
from relay.logs import JsonFormatter, ScrubSecrets
from relay.secrets import (
    parse_option_lines,
    read_option_files,
    read_secret_file,
    redact,
    secret_values,
    value_or_file,
)

SECRET = "pA55-w0rd with spaces"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{SECRET}\n", SECRET),
        (f"{SECRET}\r\n", SECRET),
        (SECRET, SECRET),
        (f"{SECRET}\n\n", f"{SECRET}\n"),  # one newline only: the rest is the value's
        (f"  {SECRET}\n", f"  {SECRET}"),
    ],
)
def test_a_secret_file_loses_one_trailing_newline_and_nothing_else(tmp_path, content, expected):
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    assert read_secret_file(path, "DSN", "--dsn-file") == expected


def test_a_missing_file_is_a_config_error_naming_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"DSN file '.*nope' \(--dsn-file\) does not exist"):
        read_secret_file(tmp_path / "nope", "DSN", "--dsn-file")


def test_a_directory_is_not_a_secret_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        read_secret_file(tmp_path, "DSN", "--dsn-file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot be read: permission denied"):
        read_secret_file(path, "DSN", "--dsn-file")


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n"])
def test_an_empty_file_is_refused(tmp_path, content):
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="is empty"):
        read_secret_file(path, "AMQP URL", "--amqp-url-file")


def test_binary_content_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        read_secret_file(path, "DSN", "--dsn-file")
    assert SECRET not in str(caught.value)


def test_value_or_file_takes_one_of_the_two(tmp_path):
    path = tmp_path / "dsn"
    path.write_text("postgresql://relay:s3cret@db/app\n")
    names = {"what": "DSN", "flag": "--dsn", "file_flag": "--dsn-file"}
    assert value_or_file("host=db", None, **names) == "host=db"
    assert value_or_file("", path, **names) == "postgresql://relay:s3cret@db/app"
    assert value_or_file(None, None, **names) is None
    with pytest.raises(ConfigError, match="either --dsn or --dsn-file, not both"):
        value_or_file("host=db", path, **names)


def test_option_files_skip_comments_and_blank_lines_and_later_files_win(tmp_path):
    first = tmp_path / "a.properties"
    first.write_text("# TLS\nsecurity.protocol = SASL_SSL\n\nsasl.password=a=b=c\n")
    second = tmp_path / "b.properties"
    second.write_text("sasl.password=second\n")
    assert read_option_files([first], "--kafka-option-file") == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "a=b=c",
    }
    merged = read_option_files([first, second], "--kafka-option-file")
    assert merged["sasl.password"] == "second"


def test_a_bad_option_line_is_located_but_not_quoted():
    with pytest.raises(ConfigError, match=r"line 2 of kafka\.properties") as caught:
        parse_option_lines(f"a=b\n{SECRET}\n", "kafka.properties")
    assert SECRET not in str(caught.value)


def test_the_kafka_connectors_secret_options_are_collected_for_scrubbing():
    options = {
        "sasl.password": SECRET,
        "ssl.key.password": "keypass",
        "sasl.oauthbearer.client.secret": "oauth-secret",
        "sasl.jaas.config": "jaas-config",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
        "some.future.password": "future-pw",  # not in the list yet: its name says it
        "security.protocol": "SASL_SSL",
        "sasl.username": "relay",
        "bootstrap.servers": "kafka:9092",
        "sasl.kerberos.kinit.cmd": "kinit -t http://u:url-pass@kdc",
        "x.password": "ab",  # too short to scrub without mangling the log
    }
    found = set(secret_values(options, KafkaSettings.is_secret))
    assert found == {
        SECRET,
        "keypass",
        "oauth-secret",
        "jaas-config",
        "-----BEGIN PRIVATE KEY-----",
        "future-pw",
        "url-pass",
    }


def test_a_declared_secret_setting_is_secret_whatever_its_form():
    options = {"url": "not-even-a-url", "exchange": "orders"}
    assert secret_values(options, RabbitMQSettings.is_secret) == ["not-even-a-url"]


def test_redact_scrubs_url_passwords_and_the_given_secrets():
    text = "amqp://relay:Url-pw-4242@rabbit/ said keypass; password=pw123 host=db"
    assert redact(text, ["keypass"]) == "amqp://relay:***@rabbit/ said ***; password=*** host=db"


def test_the_log_filter_scrubs_collected_secrets():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "auth with %s", (SECRET,), None)
    ScrubSecrets([SECRET]).filter(record)
    assert SECRET not in record.getMessage()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_log_filter_scrubs_tracebacks_too(log_format):
    """Tracebacks (debug level, internal errors) quote what the code handled."""

    try:
        raise ValueError(f"connect failed with {SECRET} at amqp://relay:Url-pw-4242@rabbit/")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    ScrubSecrets([SECRET]).filter(record)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter()
    text = formatter.format(record)
    assert "ValueError: connect failed with ***" in text.replace("\\n", "\n")
    assert SECRET not in text and "Url-pw-4242" not in text
