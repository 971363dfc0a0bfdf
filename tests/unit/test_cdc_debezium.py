"""A Debezium outbox table read with the router's options: which column is what, the
``id`` header, header placements, the event time, and every refused option."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from relay.cdc.changes import ChangeDecoder
from relay.cdc.debezium import DebeziumMapping
from relay.cdc.debezium_options import (
    UNSUPPORTED,
    DebeziumRouting,
    HeaderPlacement,
    parse_routing,
    routing_problems,
)
from relay.cdc.mapping import MappingError
from relay.cdc.outgoing import Outgoing
from relay.cdc.pgoutput import Begin, Commit, Insert, Relation, RelationColumn, TupleData
from relay.cdc.settings import CdcSettings, TableName

TABLE = TableName("app", "outbox")
UUID_OID, VARCHAR_OID, JSONB_OID, TIMESTAMPTZ_OID, TIMESTAMP_OID, NUMERIC_OID, TEXT_OID = (
    2950, 1043, 3802, 1184, 1114, 1700, 25)
COLUMNS = [("event_id", UUID_OID), ("topic", VARCHAR_OID), ("entity", VARCHAR_OID),
           ("type", VARCHAR_OID), ("body", JSONB_OID), ("at", TIMESTAMPTZ_OID),
           ("amount", NUMERIC_OID)]
OPTIONS = {"route.by.field": "topic", "table.field.event.id": "event_id",
           "table.field.event.key": "entity", "table.field.event.payload": "body",
           "table.field.event.timestamp": "at"}


def row(**changes):
    values = {"event_id": uuid4(), "topic": "Order", "entity": "42", "type": "Created",
              "body": '{"x": 1}', "at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
              "amount": None}
    return {**values, **changes}


def test_the_options_name_the_columns_and_default_to_debeziums():
    assert parse_routing({}) == DebeziumRouting()
    assert DebeziumRouting().required_columns == ("id", "aggregatetype", "aggregateid",
                                                  "payload")
    routing = parse_routing({**OPTIONS, "table.fields.additional.placement":
                             "type:header:eventType, entity:HEADER"})
    assert routing.placements == (HeaderPlacement("type", "eventType"),
                                  HeaderPlacement("entity", "entity"))
    assert routing.required_columns == ("event_id", "topic", "entity", "body", "at", "type")
    assert routing_problems({**OPTIONS, "table.fields.additional.placement": "a:header"}) == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"route.topic.replacement": "x.${routedByValue}"}, "--topic-template"),
        ({"table.expand.json.payload": "true"}, "not supported"),
        ({"route.by.feld": "x"}, "unknown"),
        ({"route.by.field": " "}, "needs a column name"),
        ({"table.fields.additional.placement": "type"}, "column:header"),
        ({"table.fields.additional.placement": "type:envelope:t"}, "not in an envelope"),
        ({"table.fields.additional.placement": "p:partition"}, "partition to the key"),
        ({"table.fields.additional.placement": "p:body"}, "unknown place"),
    ],
)
def test_each_refused_option_is_one_sentence(options, fragment):
    [problem] = routing_problems(options)
    assert fragment in problem and problem.endswith(".")
    [again] = CdcSettings(table="app.outbox", debezium=True, debezium_options=options).problems()
    assert again == problem


def test_every_unsupported_option_says_why():
    assert all(reason and not reason.endswith(".") for reason in UNSUPPORTED.values())


def test_snapshot_and_options_need_debezium_mode():
    assert "--cdc-debezium" in CdcSettings(snapshot="existing").problems()[0]
    assert "unknown" in CdcSettings(table="a.b", debezium=True, snapshot="all").problems()[0]
    assert "--cdc-debezium" in CdcSettings(debezium_options={"route.by.field": "t"}).problems()[0]
    names = CdcSettings(table="a.b", debezium=True, snapshot="existing").resolve("outbox")
    assert names.snapshot_existing and names.routing == DebeziumRouting()


def test_the_configured_columns_make_the_message_with_the_id_header_and_the_rows_time():
    bound = DebeziumMapping(TABLE, parse_routing(OPTIONS)).bind(COLUMNS)
    values = row()
    message = bound.to_message(values, 5)
    assert (message.id, message.topic, message.key) == (values["event_id"], "Order", "42")
    assert message.payload == b'{"x": 1}'
    assert message.headers == {"type": "Created", "id": str(values["event_id"])}
    assert message.timestamp == values["at"]
    naive = bound.to_message(row(at=datetime(2024, 1, 1)), 5)
    assert naive.timestamp == datetime(2024, 1, 1, tzinfo=UTC)  # timestamp: read as UTC
    assert bound.to_message(row(at=None), 5).timestamp is None


def test_placements_send_exactly_the_listed_columns_under_their_aliases():
    options = {**OPTIONS, "table.fields.additional.placement": "type:header:eventType"}
    bound = DebeziumMapping(TABLE, parse_routing(options)).bind(COLUMNS)
    values = row()
    assert bound.to_message(values, 0).headers == {"eventType": "Created",
                                                   "id": str(values["event_id"])}
    assert "amount" not in bound.columns  # not listed: not even decoded


def test_a_table_that_cannot_follow_the_options_is_refused():
    with pytest.raises(MappingError, match="no column at"):
        DebeziumMapping(TABLE, parse_routing(OPTIONS)).bind(
            [c for c in COLUMNS if c[0] != "at"])
    with pytest.raises(MappingError, match="timestamp or timestamptz"):
        DebeziumMapping(TABLE, parse_routing({**OPTIONS, "table.field.event.timestamp":
                                              "type"})).bind(COLUMNS)
    placed = {**OPTIONS, "table.fields.additional.placement": "amount:header"}
    with pytest.raises(MappingError, match="amount"):
        DebeziumMapping(TABLE, parse_routing(placed)).bind(COLUMNS)
    with pytest.raises(MappingError, match="no topic"):
        DebeziumMapping(TABLE, parse_routing(OPTIONS)).bind(COLUMNS).to_message(
            row(topic=None), 0)


def test_a_streamed_debezium_row_without_a_time_column_gets_its_commit_time():
    names = CdcSettings(table="app.outbox", debezium=True).resolve("outbox")
    out = Outgoing()
    decoder = ChangeDecoder(names, DebeziumMapping(TABLE), out)
    columns = [("id", TEXT_OID), ("aggregatetype", TEXT_OID), ("aggregateid", TEXT_OID),
               ("payload", TEXT_OID)]
    decoder.apply(Relation(7, "app", "outbox", "d",
                           tuple(RelationColumn(0, n, oid, -1) for n, oid in columns)))
    commit_us = 768_000_000_000_000  # microseconds since 2000-01-01, as pgoutput sends
    decoder.apply(Begin(final_lsn=100, commit_ts=commit_us, xid=9))
    decoder.apply(Insert(7, TupleData((b"e-1", b"Order", b"42", b"hi"), b"tttt")))
    decoder.apply(Commit(0, 100, 120, commit_us))
    [message] = [item for item in out._queue if hasattr(item, "timestamp")]
    assert message.timestamp == message.committed_at
    assert message.timestamp == datetime(2024, 5, 2, 21, 20, tzinfo=UTC)
    assert message.headers == {"id": "e-1"}
