import pytest

from relay.config import RelayConfig
from relay.durations import parse_duration
from relay.errors import ConfigError


def test_defaults_are_valid():
    assert RelayConfig(dsn="postgresql://localhost/db").validate().batch_size == 2048


def test_every_problem_is_reported_in_plain_sentences():
    config = RelayConfig(
        dsn=" ",
        schema="Bad-Name",
        mode="stream",
        batch_size=0,
        claim_lanes=0,
        publish_timeout=0,
        retention=-1,
    )
    problems = config.problems()
    assert len(problems) >= 7
    assert all(p.endswith(".") and p[0].isupper() for p in problems)
    with pytest.raises(ConfigError, match="not a plain identifier"):
        config.validate()


@pytest.mark.parametrize(
    ("setting", "sentence"),
    [
        ({"claim_lanes": 0}, "claim lanes must be between 1 and 16"),
        ({"claim_lanes": 17}, "claim lanes must be between 1 and 16"),
        ({"poll_linger": -0.001}, "poll linger must be between 0 and 1 second"),
        ({"poll_linger": 1.5}, "poll linger must be between 0 and 1 second"),
    ],
)
def test_lanes_and_linger_are_bounded(setting, sentence):
    with pytest.raises(ConfigError, match=sentence):
        RelayConfig(dsn="postgresql://localhost/db", **setting).validate()


@pytest.mark.parametrize("name", ["outbox; drop table x", 'a"b', "1abc", "Upper", "x" * 64])
def test_schema_names_that_would_need_quoting_are_refused(name):
    assert any("schema name" in p for p in RelayConfig(dsn="x", schema=name).problems())


def test_lease_ttl_must_outlast_the_publish_timeout():
    problems = RelayConfig(dsn="x", lease_ttl=5, publish_timeout=5).problems()
    assert any("lease TTL" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15", 15.0), ("1.5s", 1.5), ("500ms", 0.5), ("10m", 600.0), ("1h", 3600.0), ("7d", 604800.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1s", "10 parsecs"])
def test_bad_durations_say_what_is_expected(text):
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text, "lease TTL")
