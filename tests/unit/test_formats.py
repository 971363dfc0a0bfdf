"""The wire format: topic templates, the CloudEvents envelope per binding and mode, the
formatting connector, its settings, and the reserved header names."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import orjson
import pytest

from relay.cdc.settings import CdcSettings
from relay.config import RelayConfig
from relay.formats.cloudevents import (
    AMQP,
    KAFKA,
    STRUCTURED,
    CloudEventsEnvelope,
    binding_for,
    data_member,
    rfc3339,
)
from relay.formats.connector import FormattingConnector, format_connector
from relay.formats.headers import RELAY_SET_NAMES, RELAY_SET_PREFIXES
from relay.formats.settings import FormatSettings
from relay.formats.topics import TopicTemplate, template_problems
from relay.headers import is_reserved
from relay.model import OutboxMessage
from tests.support.fakes import InMemoryConnector

SOURCE = "/billing"


def message(**changes) -> OutboxMessage:
    fields = {"id": uuid4(), "topic": "orders", "key": "k1", "payload": b'{"a": 1}'}
    return OutboxMessage(**{**fields, **changes})


# --- topic templates -----------------------------------------------------------------------

def test_a_template_puts_the_topic_where_it_says():
    assert TopicTemplate("prod.{topic}").render("orders") == "prod.orders"
    assert TopicTemplate("{topic}.v1.{topic}").render("a") == "a.v1.a"
    assert TopicTemplate("all-events").render("orders") == "all-events"
    assert TopicTemplate("{topic}").is_identity


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("", "empty"),
        ("outbox.event.${routedByValue}", "write {topic}"),
        ("prod.{name}", "braces other than {topic}"),
        ("prod.{topic", "braces other than {topic}"),
        ("prod topic.{topic}", "characters Kafka does not allow"),
        ("x" * 250 + "{topic}", "249"),
    ],
)
def test_a_bad_template_is_one_sentence(template, fragment):
    [problem] = template_problems(template, kafka=True)
    assert fragment in problem and problem.endswith(".")


def test_only_kafka_limits_the_literal_characters():
    assert template_problems("prod topic/{topic}", kafka=False) == []
    with pytest.raises(ValueError):
        TopicTemplate("prod.{other}")


# --- CloudEvents ---------------------------------------------------------------------------

def test_binary_mode_on_kafka_adds_ce_headers_and_keeps_the_payload():
    committed = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    original = message(headers={"type": "order.created", "ce_id": "spoofed", "h": "v"},
                       committed_at=committed)
    shaped = CloudEventsEnvelope(SOURCE, KAFKA).apply(original)
    assert shaped.payload == original.payload and shaped.key == "k1"
    assert shaped.headers == {
        "type": "order.created", "h": "v", "ce_specversion": "1.0", "ce_id": str(original.id),
        "ce_source": SOURCE, "ce_type": "order.created", "ce_time": "2024-05-06T07:08:09.123456Z",
        "content-type": "application/json",
    }
    assert original.headers["ce_id"] == "spoofed"  # the original is left alone


def test_binary_mode_on_amqp_uses_the_cloudevents_prefix_and_the_content_type_property():
    original = message(content_type="text/plain; charset=utf-8")
    shaped = CloudEventsEnvelope(SOURCE, AMQP).apply(original)
    assert shaped.headers == {"cloudEvents_specversion": "1.0",
                              "cloudEvents_id": str(original.id),
                              "cloudEvents_source": SOURCE, "cloudEvents_type": "orders"}
    assert shaped.content_type == "text/plain; charset=utf-8"  # the AMQP property


def test_the_event_time_is_the_rows_own_then_the_commit_then_the_created_time():
    created = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert CloudEventsEnvelope(SOURCE, KAFKA).apply(message(created_at=created)).headers[
        "ce_time"] == "2024-01-01T10:00:00Z"
    later = datetime(2024, 1, 2, tzinfo=UTC)
    both = message(created_at=created, committed_at=later, timestamp=datetime(2023, 1, 1))
    assert CloudEventsEnvelope(SOURCE, KAFKA).apply(both).headers["ce_time"] == (
        "2023-01-01T00:00:00Z")  # a naive time is UTC
    assert "ce_time" not in CloudEventsEnvelope(SOURCE, KAFKA).apply(message()).headers
    assert rfc3339(later) == "2024-01-02T00:00:00Z"


def test_structured_mode_embeds_json_as_written_and_other_data_as_the_format_says():
    original = message(payload=b'{"b": 2,  "a": 1}', headers={"traceparent": "00-x"})
    shaped = CloudEventsEnvelope(SOURCE, KAFKA, STRUCTURED).apply(original)
    assert shaped.content_type == "application/cloudevents+json; charset=UTF-8"
    assert shaped.headers == {"traceparent": "00-x",
                              "content-type": "application/cloudevents+json; charset=UTF-8"}
    assert b'"data":{"b": 2,  "a": 1}' in shaped.payload  # byte for byte
    event = orjson.loads(shaped.payload)
    assert event["datacontenttype"] == "application/json" and event["type"] == "orders"
    tombstone = CloudEventsEnvelope(SOURCE, AMQP, STRUCTURED).apply(message(payload=None))
    assert "data" not in orjson.loads(tombstone.payload)
    assert "content-type" not in tombstone.headers  # AMQP: the content_type property


@pytest.mark.parametrize(
    ("payload", "content_type", "member"),
    [
        (b"[1, 2]", "application/vnd.api+json; charset=utf-8", {"data": [1, 2]}),
        (b"not json", "application/json", {"data_base64": base64.b64encode(b"not json")}),
        (b"hello", "text/plain", {"data": "hello"}),
        (b"\xff", "text/plain", {"data_base64": base64.b64encode(b"\xff")}),
        (b"\x00\x01", "image/png", {"data_base64": base64.b64encode(b"\x00\x01")}),
    ],
)
def test_the_data_member_follows_the_json_event_format(payload, content_type, member):
    found = orjson.loads(orjson.dumps(data_member(payload, content_type)))
    expected = {k: v.decode() if isinstance(v, bytes) else v for k, v in member.items()}
    assert found == expected


def test_rabbitmq_gets_the_amqp_binding_and_everything_else_kafkas():
    assert binding_for("rabbitmq") is AMQP
    assert binding_for("kafka") is KAFKA and binding_for("memory") is KAFKA


# --- the formatting connector --------------------------------------------------------------

def test_the_connector_publishes_shaped_copies_and_leaves_the_batch_alone():
    inner = InMemoryConnector()
    formatting = FormattingConnector(inner, template=TopicTemplate("prod.{topic}"),
                                     envelope=CloudEventsEnvelope(SOURCE, KAFKA))
    batch = [message(), message(topic="payments", key=None)]
    outcomes = asyncio.run(formatting.publish(batch, timeout=1))
    assert [o.delivered for o in outcomes] == [True, True]
    assert [m.topic for m in inner.published] == ["prod.orders", "prod.payments"]
    assert inner.published[1].headers["ce_type"] == "payments"  # the topic as written
    assert [m.topic for m in batch] == ["orders", "payments"] and batch[0].headers == {}


def test_nothing_is_wrapped_unless_a_format_is_configured():
    inner = InMemoryConnector()
    plain = RelayConfig(dsn="x", connector="memory")
    assert format_connector(inner, plain) is inner
    identity = RelayConfig(dsn="x", formats=FormatSettings(topic_template="{topic}"))
    assert format_connector(inner, identity) is inner
    debezium = RelayConfig(dsn="x", mode="cdc",
                           cdc=CdcSettings(table="app.outbox", debezium=True))
    wrapped = format_connector(inner, debezium)
    assert isinstance(wrapped, FormattingConnector)
    assert wrapped.shape(message(topic="Order")).topic == "outbox.event.Order"


# --- settings ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (FormatSettings(envelope="cloudevent"), "envelope 'cloudevent' is unknown"),
        (FormatSettings(envelope="cloudevents"), "needs --cloudevents-source"),
        (FormatSettings(envelope="cloudevents", cloudevents_source="/a b"), "URI reference"),
        (FormatSettings(envelope="cloudevents", cloudevents_source="/a",
                        cloudevents_mode="batch"), "mode 'batch' is unknown"),
        (FormatSettings(cloudevents_source="/a"), "need --envelope cloudevents"),
        (FormatSettings(topic_template="a.${routedByValue}"), "write {topic}"),
    ],
)
def test_each_format_problem_is_one_sentence(settings, fragment):
    [problem] = RelayConfig(dsn="postgresql://localhost/app", formats=settings).problems()
    assert fragment in problem and problem.endswith(".")


def test_good_format_settings_pass():
    settings = FormatSettings(topic_template="prod.{topic}", envelope="cloudevents",
                              cloudevents_source="https://example.com/a?b=c#d",
                              cloudevents_mode="structured")
    assert RelayConfig(dsn="postgresql://localhost/app", formats=settings).problems() == []


def test_every_header_name_the_relay_sets_is_one_a_writer_may_not_use():
    for name in RELAY_SET_NAMES:
        assert is_reserved(name), name
    for prefix in RELAY_SET_PREFIXES:
        assert is_reserved(prefix + "id"), prefix
    for name in ("traceparent", "type", "tenant"):
        assert not is_reserved(name), name
