"""Every duration and size is range-checked at startup, with the allowed range in the
sentence: a value PostgreSQL cannot take (``--lease-ttl 30d`` as a timeout in int
milliseconds, ``--retention 99999999d`` before the first timestamp) used to be accepted
and then fail on every round, forever."""

from __future__ import annotations

import pytest

from relay.cdc.settings import CdcSettings
from relay.config import RelayConfig
from relay.durations import MAX_AGE, MAX_TIMEOUT, format_duration, parse_age, parse_duration
from relay.errors import ConfigError

DAY = 86400.0
DSN = "postgresql://localhost/db"
TOO_LONG = [25 * DAY, 30 * DAY, float("9" * 400)]  # the last is inf after float()


@pytest.mark.parametrize(
    "field",
    ["publish_timeout", "lease_ttl", "poll_interval", "shutdown_timeout", "retry_base",
     "retry_cap"],
)  # fmt: skip
@pytest.mark.parametrize("seconds", TOO_LONG)
def test_a_timer_beyond_postgresqls_int_milliseconds_is_refused(field, seconds):
    extra = {"lease_ttl": 2 * seconds} if field == "publish_timeout" else {}
    problems = RelayConfig(dsn=DSN, **{field: seconds, **extra}).problems()
    assert any("must be between 1ms and 24d" in p for p in problems), problems


@pytest.mark.parametrize("field", ["publish_timeout", "lease_ttl", "poll_interval"])
def test_below_a_millisecond_is_refused(field):
    # int(0.0004 * 1000) == 0, which PostgreSQL reads as "no timeout"
    problems = RelayConfig(dsn=DSN, **{field: 0.0004}).problems()
    assert any("must be between 1ms and 24d" in p for p in problems), problems


def test_the_lease_ttl_says_why_its_limit_is_what_it_is():
    problems = RelayConfig(dsn=DSN, lease_ttl=30 * DAY).problems()
    assert "The lease TTL (30d) must be between 1ms and 24d: PostgreSQL takes it" in problems[0]


def test_the_longest_allowed_timer_passes():
    config = RelayConfig(dsn=DSN, lease_ttl=MAX_TIMEOUT, publish_timeout=MAX_TIMEOUT / 2)
    assert config.problems() == []


@pytest.mark.parametrize("retention", [99999999 * DAY, MAX_AGE + 1, -1.0])
def test_a_retention_before_the_first_timestamp_is_refused(retention):
    problems = RelayConfig(dsn=DSN, retention=retention).problems()
    assert any("retention" in p and "and 1000000d" in p and "4713 BC" in p for p in problems)


@pytest.mark.parametrize("retention", [0.0, 3600.0, MAX_AGE])
def test_retentions_within_range_pass(retention):
    assert RelayConfig(dsn=DSN, retention=retention).problems() == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"heartbeat_interval": 30 * DAY}, "CDC heartbeat interval (30d) must be 0 (off) or"),
        ({"heartbeat_interval": -1}, "CDC heartbeat interval (-1s) must be 0 (off) or"),
        ({"takeover_ttl": 30 * DAY}, "CDC takeover TTL (30d) must be between 1s and 24d"),
        ({"takeover_ttl": 0.5}, "CDC takeover TTL (500ms) must be between 1s and 24d"),
    ],
)
def test_cdc_timers_are_bounded(settings, expected):
    assert any(expected in p for p in CdcSettings(**settings).problems())


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"max_message_bytes": 2_000_000_000}, "between 1 and 1000000000 bytes"),
        ({"max_message_bytes": 0}, "between 1 and 1000000000 bytes"),
        ({"max_attempts": 2**31}, "at most 2147483647"),
        ({"max_attempts": 0}, "at least 1"),
    ],
)
def test_sizes_are_bounded(setting, expected):
    assert any(expected in p for p in RelayConfig(dsn=DSN, **setting).problems())


@pytest.mark.parametrize("text", ["99999999d", "9" * 400])
def test_an_age_filter_beyond_the_first_timestamp_is_a_config_error(text):
    with pytest.raises(ConfigError, match=r"must be between 0 and 1000000d"):
        parse_age(text, "--older-than age")


@pytest.mark.parametrize("text", ["15s\nx", "1h 2m", "1e3s"])
def test_a_duration_is_the_whole_text(text):
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text, "lease TTL")


@pytest.mark.parametrize(
    ("seconds", "text"), [(24 * DAY, "24d"), (3600, "1h"), (0.5, "500ms"), (90, "90s"), (0, "0")]
)
def test_limits_are_written_the_way_they_are_typed(seconds, text):
    assert format_duration(seconds) == text
    if seconds:
        assert parse_duration(text, "x") == seconds
