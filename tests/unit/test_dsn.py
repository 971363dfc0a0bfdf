import psycopg
import pytest

from relay.db import connection_failure
from relay.dsn import describe_dsn, describe_url, redact, secrets_in
from relay.errors import ConfigError


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app:s3cr3t-pw@db.example:5432/app",
        "host=db user=app password=s3cr3t-pw dbname=app",
        "host=db password='s3cr3t-pw' dbname=app",
        "amqp://relay:s3cr3t-pw@mq:5672/%2F",
    ],
)
def test_redact_removes_passwords(text):
    assert "s3cr3t-pw" not in redact(text)
    assert "s3cr3t-pw" in secrets_in(text)


def test_describe_dsn_names_the_target_without_the_password():
    described = describe_dsn("postgresql://app:s3cr3t-pw@db.example:6432/orders")
    assert described == "app@db.example:6432/orders"


def test_describe_url_drops_credentials():
    assert describe_url("amqp://relay:s3cr3t-pw@mq:5672/vhost") == "amqp://mq:5672/vhost"


def test_unparseable_dsn_is_a_config_error_without_the_text():
    with pytest.raises(ConfigError) as info:
        describe_dsn("host=db password='s3cr3t-pw")
    assert "s3cr3t-pw" not in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:s3cr3t-pw@db.example:5432/app",
        "host=db.example user=app password=s3cr3t-pw",
    ],
)
def test_a_failed_connection_names_the_target_but_never_the_password(dsn):
    # The driver's message may quote what it was given; the error must not pass it on.
    driver_error = psycopg.OperationalError(f"connection is bad: cannot use {dsn!r}")
    error = connection_failure(dsn, driver_error)
    assert "s3cr3t-pw" not in str(error)
    assert "app@db.example:5432" in str(error) and "cannot use" in str(error)
