"""The ecosystem's formats on real brokers, read back with plain clients (a
confluent_kafka consumer with assign(), pika's basic_get): the topic template, CloudEvents
in both content modes and both protocol bindings, and a Debezium outbox table captured
with Debezium's router defaults (topic, key, ``id`` header, record timestamp, snapshot)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pika
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from relay import enqueue
from relay.cdc.preflight import run_checks
from relay.connector import load_connector
from relay.formats.settings import FormatSettings
from relay.inbox import Inbox, confluent_kafka_message_id
from relay.migrations import migrate
from tests.support.cdc_relays import FAST_CDC
from tests.support.kafka_harness import KafkaHarness
from tests.support.relays import RunningRelay, eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SOURCE = "https://example.com/billing"


# --- plain clients -------------------------------------------------------------------------

def kafka_read(bootstrap: str, topic: str, count: int, timeout: float = 20) -> list[Any]:
    """The first ``count`` records of ``topic``'s partition 0, as confluent_kafka gives them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "plain",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            record = consumer.poll(0.2)
            if record is not None and record.error() is None:
                records.append(record)
        return records
    finally:
        consumer.close()


def by_key(records: list[Any]) -> list[Any]:
    """Records in key order: messages of different keys may arrive in either order."""
    return sorted(records, key=lambda r: r.key() or b"")


def headers_of(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers() or []}


class PlainQueue:
    """A queue bound to ``exchange`` with ``routing_key``, read with basic_get."""

    def __init__(self, url: str, exchange: str, routing_key: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.exchange = exchange
        self.channel.exchange_declare(exchange, "topic", durable=True)
        self.queue = f"plain-{uuid.uuid4().hex[:10]}"
        self.channel.queue_declare(self.queue, arguments={"x-expires": 600_000})
        self.channel.queue_bind(self.queue, exchange, routing_key=routing_key)

    def get(self, count: int, timeout: float = 20) -> list[tuple[Any, bytes]]:
        got: list[tuple[Any, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                self.connection.sleep(0.05)  # basic_get has no wait: poll with a deadline
                continue
            got.append((properties, body))
        return got

    def close(self) -> None:
        self.channel.queue_delete(self.queue)
        self.channel.exchange_delete(self.exchange)
        self.connection.close()


def amqp_headers(properties: Any) -> dict[str, str]:
    """pika hands AMQP long strings over as bytes or str; text either way."""
    return {k: v.decode() if isinstance(v, bytes) else str(v)
            for k, v in (properties.headers or {}).items()}


def relay_once(config, dsn: str, write, published: int) -> Any:
    """Run a relay (the real connector, through RelayService) until ``published``
    messages are confirmed; ``write`` runs once the relay is up."""

    async def scenario():
        async with RunningRelay(config, load_connector(config)) as running:
            if config.mode == "cdc":
                await eventually(lambda: running.service.source.streaming.is_set(), 20, "stream")
            written = await asyncio.to_thread(write)
            stats = running.service.source.stats
            await eventually(lambda: stats.published >= published, 30, "the confirms")
            return written

    return asyncio.run(scenario())


def enqueue_two(dsn: str, topic: str) -> list[uuid.UUID]:
    with psycopg.connect(dsn) as conn:
        first = enqueue(conn, topic=topic, key="order-1", payload={"n": 1},
                        headers={"type": "com.example.order.created", "traceparent": TRACEPARENT})
        second = enqueue(conn, topic=topic, key="order-2", payload=b"\x00\xffraw",
                         content_type="application/octet-stream")
    return [first, second]


def created_at(dsn: str, ident: uuid.UUID) -> datetime:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT created_at FROM outbox.messages WHERE id = %s",
                           (ident,)).fetchone()
    assert row is not None
    return row[0]


def cloudevents_config(dsn: str, harness_config, mode: str | None = None, **formats: Any):
    install_outbox(dsn)
    settings = FormatSettings(envelope="cloudevents", cloudevents_source=SOURCE,
                              cloudevents_mode=mode, **formats)
    return dataclasses.replace(harness_config(relay_config(dsn, retention=3600)),
                               formats=settings)


# --- CloudEvents on Kafka ------------------------------------------------------------------

@pytest.fixture
def kafka(kafka_bootstrap):
    harness = KafkaHarness(kafka_bootstrap)
    yield harness
    harness.cleanup()


def test_cloudevents_binary_mode_on_kafka_puts_ce_headers_around_the_payload(db_dsn, kafka):
    topic = f"orders{uuid.uuid4().hex[:8]}"
    kafka.create_topic(f"prod.{topic}")
    config = cloudevents_config(db_dsn, kafka.configure, topic_template="prod.{topic}")
    first, second = relay_once(config, db_dsn, lambda: enqueue_two(db_dsn, topic), 2)
    records = by_key(kafka_read(kafka.bootstrap, f"prod.{topic}", 2))
    assert [r.key() for r in records] == [b"order-1", b"order-2"]  # key unchanged
    assert [r.value() for r in records] == [b'{"n":1}', b"\x00\xffraw"]  # value: the payload
    one, two = headers_of(records[0]), headers_of(records[1])
    assert {k: v for k, v in one.items() if k.startswith("ce_")} == {
        "ce_specversion": "1.0", "ce_id": str(first), "ce_source": SOURCE,
        "ce_type": "com.example.order.created", "ce_time": one["ce_time"]}
    assert one["content-type"] == "application/json"
    assert two["ce_type"] == topic  # no type header: the topic as written
    assert two["content-type"] == "application/octet-stream"
    assert one["message_id"] == str(first) and two["ce_id"] == str(second)  # inbox unchanged
    assert one["traceparent"] == TRACEPARENT
    moment = datetime.fromisoformat(one["ce_time"].replace("Z", "+00:00"))
    assert one["ce_time"].endswith("Z") and moment == created_at(db_dsn, first)


def test_the_inbox_knows_a_cloudevent_read_from_kafka_by_its_ce_id(db_dsn, kafka):
    """A CloudEvents producer that sends no ``message_id`` (another tool, a bridge) and
    the relay's own record of the same event are one message to the inbox."""
    topic = f"orders{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    first, _ = relay_once(cloudevents_config(db_dsn, kafka.configure), db_dsn,
                          lambda: enqueue_two(db_dsn, topic), 2)
    relays = by_key(kafka_read(kafka.bootstrap, topic, 2))[0]
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic, relays.value(), relays.key(), headers=[
        (name, value) for name, value in relays.headers() if name != "message_id"])
    assert producer.flush(10) == 0
    records = [r for r in kafka_read(kafka.bootstrap, topic, 3) if r.key() == b"order-1"]
    assert "message_id" not in headers_of(records[1])
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        migrate(conn, "consumer_side", tracks=("inbox",))
        inbox = Inbox(consumer="billing", schema="consumer_side")
        results = [inbox.process(conn, confluent_kafka_message_id(record), lambda _: None)
                   for record in records]
    assert [(r.duplicate, r.message_id) for r in results] == [
        (False, str(first)), (True, str(first))]


def test_cloudevents_structured_mode_on_kafka_puts_the_json_event_in_the_value(db_dsn, kafka):
    topic = kafka.new_topic()
    config = cloudevents_config(db_dsn, kafka.configure, "structured")
    first, _ = relay_once(config, db_dsn, lambda: enqueue_two(db_dsn, topic), 2)
    records = by_key(kafka_read(kafka.bootstrap, topic, 2))
    assert headers_of(records[0])["content-type"] == "application/cloudevents+json; charset=UTF-8"
    assert not [h for h in headers_of(records[0]) if h.startswith("ce_")]
    event, raw = orjson.loads(records[0].value()), orjson.loads(records[1].value())
    assert event["specversion"] == "1.0" and event["id"] == str(first)
    assert (event["source"], event["type"]) == (SOURCE, "com.example.order.created")
    assert event["datacontenttype"] == "application/json" and event["data"] == {"n": 1}
    assert b'"data":{"n":1}' in records[0].value()  # the JSON text as written, embedded
    assert base64.b64decode(raw["data_base64"]) == b"\x00\xffraw" and "data" not in raw
    assert records[1].key() == b"order-2"


# --- CloudEvents on RabbitMQ ---------------------------------------------------------------

def rabbitmq_config(amqp_url: str, exchange: str):
    def configure(base):
        options = {**base.connector_options, "url": amqp_url, "exchange": exchange}
        return dataclasses.replace(base, connector="rabbitmq", connector_options=options)
    return configure


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_cloudevents_on_rabbitmq_follow_the_amqp_binding(db_dsn, amqp_url, mode):
    exchange = f"test-{uuid.uuid4().hex[:10]}"
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    queue = PlainQueue(amqp_url, exchange, f"prod.{topic}")
    try:
        config = cloudevents_config(db_dsn, rabbitmq_config(amqp_url, exchange), mode,
                                    topic_template="prod.{topic}")
        first, _ = relay_once(config, db_dsn, lambda: enqueue_two(db_dsn, topic), 2)
        got = sorted(queue.get(2), key=lambda p: p[0].headers["key"])
        (properties, body), (other, raw) = got
    finally:
        queue.close()
    assert properties.message_id == str(first)  # the inbox's id, as before
    headers = amqp_headers(properties)
    if mode == "binary":
        assert body == b'{"n":1}' and raw == b"\x00\xffraw"
        assert properties.content_type == "application/json"  # datacontenttype
        assert other.content_type == "application/octet-stream"
        assert {k: v for k, v in headers.items() if k.startswith("cloudEvents")} == {
            "cloudEvents_specversion": "1.0", "cloudEvents_id": str(first),
            "cloudEvents_source": SOURCE, "cloudEvents_type": "com.example.order.created",
            "cloudEvents_time": headers["cloudEvents_time"]}
        assert "cloudEvents_datacontenttype" not in headers and "content-type" not in headers
    else:
        assert properties.content_type == "application/cloudevents+json; charset=UTF-8"
        event = orjson.loads(body)
        assert (event["id"], event["data"]) == (str(first), {"n": 1})
        assert not [k for k in headers if k.startswith("cloudEvents")]
    assert headers["key"] == "order-1" and headers["traceparent"] == TRACEPARENT


# --- a Debezium outbox table ---------------------------------------------------------------

DEBEZIUM_TABLE = """
CREATE SCHEMA app;
CREATE TABLE app.outbox (
  id uuid PRIMARY KEY,
  aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL,
  type varchar(255) NOT NULL,
  payload jsonb,
  occurred_at timestamptz
)"""


def debezium_config(dsn: str, configure, **cdc: Any):
    install_outbox(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DEBEZIUM_TABLE)
    settings = dataclasses.replace(FAST_CDC, table="app.outbox", debezium=True, **cdc)
    return configure(relay_config(dsn, mode="cdc", cdc=settings))


def insert_event(dsn: str, aggregate: str, key: str, occurred: datetime | None) -> uuid.UUID:
    ident = uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO app.outbox VALUES (%s, %s, %s, 'OrderCreated', %s, %s)",
                     (ident, aggregate, key, f'{{"order": "{key}"}}', occurred))
    return ident


def test_a_debezium_table_reaches_kafka_as_debeziums_router_sends_it(db_dsn, kafka):
    """Topic outbox.event.<aggregatetype>, key aggregateid, header id, the rows already
    there published by the snapshot, and the record timestamp: the time column where the
    row has one, else the commit time (never the time the relay got round to it)."""
    aggregate = f"Order{uuid.uuid4().hex[:8]}"
    kafka.create_topic(f"outbox.event.{aggregate}")
    config = debezium_config(db_dsn, kafka.configure, snapshot="existing",
                             debezium_options={"table.field.event.timestamp": "occurred_at"})
    occurred = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    old = insert_event(db_dsn, aggregate, "order-0", occurred)  # before the first start
    relay_once(config, db_dsn, lambda: None, 1)  # creates the slot: the snapshot
    before = datetime.now(UTC)
    new = insert_event(db_dsn, aggregate, "order-1", None)  # while no relay runs
    committed = datetime.now(UTC)
    relay_once(config, db_dsn, lambda: None, 1)  # streams it, a while after its commit
    records = kafka_read(kafka.bootstrap, f"outbox.event.{aggregate}", 2)
    assert [r.key() for r in records] == [b"order-0", b"order-1"]
    assert [headers_of(r)["id"] for r in records] == [str(old), str(new)]
    assert [headers_of(r)["message_id"] for r in records] == [str(old), str(new)]
    assert records[1].value() == b'{"order": "order-1"}'
    assert headers_of(records[1])["type"] == "OrderCreated"
    assert records[0].timestamp()[1] == int(occurred.timestamp() * 1000)
    stamp = datetime.fromtimestamp(records[1].timestamp()[1] / 1000, UTC)
    assert before - timedelta(milliseconds=1) <= stamp <= committed


def test_debezium_options_choose_the_timestamp_and_headers_on_rabbitmq(db_dsn, amqp_url):
    exchange = f"test-{uuid.uuid4().hex[:10]}"
    aggregate = f"Order{uuid.uuid4().hex[:8]}"
    queue = PlainQueue(amqp_url, exchange, f"outbox.event.{aggregate}")
    options = {"table.field.event.timestamp": "occurred_at",
               "table.fields.additional.placement": "type:header:eventType"}
    config = debezium_config(db_dsn, rabbitmq_config(amqp_url, exchange),
                             debezium_options=options)
    occurred = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    try:
        ident = relay_once(config, db_dsn,
                           lambda: insert_event(db_dsn, aggregate, "order-7", occurred), 1)
        [(properties, body)] = queue.get(1)
    finally:
        queue.close()
    headers = amqp_headers(properties)
    assert headers == {"id": str(ident), "eventType": "OrderCreated", "key": "order-7"}
    assert properties.message_id == str(ident)
    assert properties.timestamp == int(occurred.timestamp())  # the row's time
    assert body == b'{"order": "order-7"}'


def test_a_debezium_table_without_the_snapshot_publishes_only_new_rows(db_dsn, kafka):
    aggregate = f"Order{uuid.uuid4().hex[:8]}"
    kafka.create_topic(f"outbox.event.{aggregate}")
    config = debezium_config(db_dsn, kafka.configure)
    insert_event(db_dsn, aggregate, "order-0", None)  # already there: not published
    new = relay_once(config, db_dsn, lambda: insert_event(db_dsn, aggregate, "order-1", None), 1)
    records = kafka_read(kafka.bootstrap, f"outbox.event.{aggregate}", 2, timeout=3)
    assert [headers_of(r)["id"] for r in records] == [str(new)]


def test_doctor_names_a_column_the_debezium_options_need(db_dsn):
    config = debezium_config(db_dsn, lambda base: base,
                             debezium_options={"table.field.event.timestamp": "created"})
    failed = {check.name: check.detail for check in run_checks(db_dsn, config) if not check.ok}
    assert failed == {"captured table": "table app.outbox lacks column created"}
