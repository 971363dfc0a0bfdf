import psycopg
import pytest

from relay.db import connection_failure
from relay.dsn import check_dsn, describe_dsn, describe_url, dsn_problems, redact, secrets_in
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


CANARY = "CanaryPw"


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://u:Wrong@{CANARY}@host/db",
        f"postgresql://u:{CANARY}@@host/db",
        f"postgresql://u:a@b@{CANARY}@host:5432/db?sslmode=require",
        f"amqp://guest:x@{CANARY}@[::1",
        f"host=db password='{CANARY} and more",  # unterminated quote
        f"host=db sslpassword={CANARY}",
    ],
)
def test_a_password_is_redacted_even_in_a_malformed_dsn(text):
    assert CANARY not in redact(text)
    assert any(CANARY in secret for secret in secrets_in(text))


def test_each_piece_of_a_password_with_a_raw_at_sign_is_a_secret():
    """libpq splits ``u:Wrong@CanaryPw@host`` at the first '@' and quotes
    ``CanaryPw@host`` as the host name in its errors."""
    found = secrets_in(f"postgresql://u:Wrong@{CANARY}@host/db")
    assert CANARY in found and "Wrong" in found


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("host=db port=abc", "parameter 'port' must be a port number"),
        ("postgresql://db:abc/app", "parameter 'port' must be a port number"),
        ("postgresql://db:70000/app", "parameter 'port' must be a port number"),
        ("host=db dbname=app foo=bar", "parameter 'foo' is unknown"),
        ("postgresql://db/app?foo=bar", "parameter 'foo' is unknown"),
        ("host=db connect_timeout=soon", "parameter 'connect_timeout' must be a whole number"),
        ("host=db sslmode=maybe", "parameter 'sslmode' must be one of"),
        ("host=db target_session_attrs=any-one", "'target_session_attrs' must be one of"),
        (f"postgresql://u:Wrong@{CANARY}@db/app", "more than one '@' before the host"),
        (f"host=db password='{CANARY}", "cannot be parsed"),
        (f"host=db {CANARY}", "cannot be parsed"),
    ],
)
def test_a_dsn_libpq_would_refuse_is_named_before_connecting(dsn, expected):
    problems = dsn_problems(dsn)
    assert len(problems) == 1 and expected in problems[0]
    assert CANARY not in problems[0]
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        check_dsn(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@db:5432/app",
        "postgresql://app@db1:5432,db2:5433/app?target_session_attrs=read-write",
        "postgresql://u:p%40ss@[::1]:5432/app",
        "host=db port=5432 dbname=app password='two words' sslmode=verify-full",
        "dbname=app",
    ],
)
def test_ordinary_dsns_have_no_problem(dsn):
    assert dsn_problems(dsn) == []
