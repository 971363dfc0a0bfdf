"""CDC settings: derived names and plain-sentence problems."""

import pytest

from relay.cdc.settings import CdcSettings, TableName, parse_table_name


def test_names_are_derived_from_the_schema():
    names = CdcSettings().resolve("billing")
    assert (names.slot, names.publication) == ("outbox_relay_billing", "outbox_relay_billing")
    assert names.table == TableName("billing", "messages")
    assert names.message_prefix == "outbox-relay:billing"
    assert not names.debezium


def test_configured_names_win():
    settings = CdcSettings(slot="s1", publication="p1", table="app.outbox", debezium=True)
    names = settings.resolve("outbox")
    assert (names.slot, names.publication, str(names.table)) == ("s1", "p1", "app.outbox")
    assert settings.problems() == []


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (CdcSettings(slot="Bad-Name"), "replication slot name"),
        (CdcSettings(publication="1pub"), "publication name"),
        (CdcSettings(table="no_schema"), "schema.table"),
        (CdcSettings(table="a.b;drop"), "schema.table"),
        (CdcSettings(debezium=True), "--cdc-table"),
        (CdcSettings(heartbeat_interval=-1), "heartbeat"),
        (CdcSettings(takeover_ttl=0.5), "takeover TTL"),
        (CdcSettings(linger=2), "linger"),
    ],
)
def test_each_problem_is_one_sentence(settings, fragment):
    problems = settings.problems()
    assert len(problems) == 1
    assert fragment in problems[0]
    assert problems[0].endswith(".")


def test_a_long_schema_needs_an_explicit_slot_name():
    schema = "s" * 60
    problems = CdcSettings().problems(schema)
    assert "--cdc-slot" in problems[0] and "--cdc-publication" in problems[1]
    assert CdcSettings(slot="short", publication="pub").problems(schema) == []


def test_table_names_must_be_plain():
    assert parse_table_name("public.outbox") == TableName("public", "outbox")
    assert parse_table_name('public."Outbox"') is None
    assert parse_table_name("a.b.c") is None


def test_names_follow_the_same_rules_as_relay_config():
    from relay.cdc import settings
    from relay.config import DEFAULT_SCHEMA
    from relay.names import is_plain_identifier

    assert settings.DEFAULT_SCHEMA == DEFAULT_SCHEMA
    for name in ("outbox", "_x1", "1x", "Outbox", "a" * 63, "a" * 64, "a-b"):
        assert settings.is_plain_identifier(name) == is_plain_identifier(name)


def test_the_takeover_ttl_outlives_a_publish():
    assert "twice the publish timeout" in CdcSettings(takeover_ttl=5).problems(
        publish_timeout=5)[0]
    assert CdcSettings(takeover_ttl=10).problems(publish_timeout=5) == []
