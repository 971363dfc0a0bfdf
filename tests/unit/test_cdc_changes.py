"""From pgoutput messages to outbox events: recorded frames, envelopes, Debezium rows."""

import struct
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from relay.cdc import changes
from relay.cdc.changes import ChangeDecoder
from relay.cdc.debezium import DebeziumMapping
from relay.cdc.envelope import decode_envelope, encode_envelope
from relay.cdc.frames import PrimaryKeepalive, parse_copy_data
from relay.cdc.mapping import MappingError, OutboxTableMapping
from relay.cdc.outgoing import Mark, Outgoing, Unmappable
from relay.cdc.pgoutput import (
    Begin,
    Commit,
    Message,
    PgOutputProtocolError,
    Relation,
    RelationColumn,
    parse_pgoutput,
)
from relay.cdc.settings import CdcSettings, TableName
from relay.model import OutboxMessage
from tests.unit.test_pgoutput import messages_of, read_frames

RECORDED_TABLE = TableName("public", "outbox")


def decoder_for(table=RECORDED_TABLE, *, debezium=False, schema="outbox"):
    names = CdcSettings(table=str(table), debezium=debezium).resolve(schema)
    mapping = DebeziumMapping(table) if debezium else OutboxTableMapping(table)
    out = Outgoing()
    return ChangeDecoder(names, mapping, out), out


def drain(out):
    """Everything queued, in order (events and marks), without confirming anything."""
    out._in_flight = object()  # keep marks in the queue
    return list(out._queue)


def test_recorded_outbox_inserts_become_events_with_commit_marks():
    decoder, out = decoder_for()
    for message in messages_of("frames_binary.bin"):
        decoder.apply(message)
    queued = drain(out)
    events = [e for e in queued if isinstance(e, OutboxMessage)]
    assert [e.id.hex[0] * 2 for e in events] == ["11", "22", "33", "44", "55"]
    first = events[0]
    assert (first.topic, first.key) == ("orders", "order-1")
    assert first.payload == b'{"items": [1, 2], "total": 12.5}'  # jsonb text, as polled
    assert first.headers == {"trace": "abc"}
    assert first.created_at == datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert events[1].payload == b"\x00\xff\x10binary\x00"
    assert events[4].payload == b'{"deleted": true}'  # the insert of insert + delete
    commits = [m for m in queued if isinstance(m, Mark)]
    assert len(commits) == 3  # the last two commits are adjacent: one mark
    # each event carries its transaction's commit position, and those only grow
    positions = [e.position for e in events]
    assert positions == sorted(positions) and positions[0] == positions[2]
    # and its commit timestamp, which starts the commit -> confirm latency
    begins = [m.commit_time for m in messages_of("frames_binary.bin") if isinstance(m, Begin)]
    assert events[0].committed_at == begins[0] == events[2].committed_at
    assert {e.committed_at for e in events} <= set(begins)


def test_text_format_frames_decode_to_the_same_events():
    by_format = {}
    for name in ("frames_binary.bin", "frames_text.bin"):
        decoder, out = decoder_for()
        for message in messages_of(name):
            decoder.apply(message)
        by_format[name] = [(e.id, e.payload, dict(e.headers)) for e in drain(out)
                           if isinstance(e, OutboxMessage)]
    assert by_format["frames_binary.bin"] == by_format["frames_text.bin"]


def test_other_tables_are_ignored():
    decoder, out = decoder_for(TableName("public", "elsewhere"))
    for message in messages_of("frames_binary.bin"):
        decoder.apply(message)
    assert not [e for e in drain(out) if isinstance(e, OutboxMessage)]


def emitted(decoder, content, *, transactional=True, lsn=500, commit_ts=0):
    if transactional:
        decoder.apply(Begin(final_lsn=lsn, commit_ts=commit_ts, xid=1))
    decoder.apply(Message(transactional, lsn, "outbox-relay:outbox", content))
    if transactional:
        decoder.apply(Commit(0, lsn, lsn + 8, 0))


def test_an_emitted_envelope_becomes_an_event():
    decoder, out = decoder_for()
    message = OutboxMessage(id=uuid4(), topic="orders", key="k1", payload=b'{"a": [1, 2]}',
                            headers={"h": "v"})
    emitted(decoder, encode_envelope(message, body_kind="json"), commit_ts=86_400_000_000)
    [event, mark] = drain(out)
    assert (event.id, event.topic, event.key) == (message.id, "orders", "k1")
    assert event.committed_at == datetime(2000, 1, 2, tzinfo=UTC)  # its transaction's commit
    assert event.payload == message.payload  # as written
    assert event.headers == {"h": "v"} and event.position == 500
    assert mark == Mark(508, True)


def test_a_non_transactional_envelope_is_its_own_position():
    decoder, out = decoder_for()
    message = OutboxMessage(id=uuid4(), topic="t", key=None, payload=b"\x00",
                            content_type="application/octet-stream")
    emitted(decoder, encode_envelope(message, body_kind="bytes"), lsn=800, commit_ts=1)
    emitted(decoder, encode_envelope(message, body_kind="bytes"), transactional=False, lsn=900)
    [_, _, event, mark] = drain(out)
    assert (event.payload, event.position, mark) == (b"\x00", 900, Mark(901, True))
    assert event.committed_at is None  # no transaction, no commit timestamp


def test_other_prefixes_are_ignored_and_bad_envelopes_are_parked_not_skipped():
    decoder, out = decoder_for()
    decoder.apply(Begin(final_lsn=1, commit_ts=0, xid=1))
    decoder.apply(Message(True, 1, "someone-else", b"whatever"))
    decoder.apply(Message(True, 1, "outbox-relay:outbox", b"not an envelope"))
    decoder.apply(Commit(0, 1, 9, 0))
    [parked, _] = drain(out)
    assert isinstance(parked, Unmappable)
    assert parked.raw == b"not an envelope" and "header" in parked.error


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b'{"v": 2}\n', "version"),
        (b'{"v": 1, "id": "x"}\n', "UUID"),
        (b'{"v": 1, "id": "%s", "topic": ""}\n' % str(uuid4()).encode(), "topic"),
        (b'{"v": 1, "id": "%s", "topic": "t", "content_type": "c", "body": "yaml"}\n{'
         % str(uuid4()).encode(), "body kind"),
    ],
)
def test_envelope_errors_say_what_is_wrong(content, error):
    with pytest.raises(MappingError, match=error):
        decode_envelope(content, 0)


def test_a_json_body_is_published_byte_for_byte():
    header = b'{"v": 1, "id": "%s", "topic": "t", "content_type": "c", "body": "json"}\n'
    body = b'{"a": [1, 2], "b": "x, y: z"}'
    message = decode_envelope(header % str(uuid4()).encode() + body, 0)
    assert message.payload == body


def debezium_relation(*extra):
    columns = [("id", 2950), ("aggregatetype", 1043), ("aggregateid", 1043),
               ("type", 1043), ("payload", 3802), *extra]
    return Relation(7, "app", "outbox", "d",
                    tuple(RelationColumn(0, name, oid, -1) for name, oid in columns))


def test_debezium_rows_route_by_aggregate_and_carry_type_as_a_header():
    bound = DebeziumMapping(TableName("app", "outbox")).bind(
        [(c.name, c.type_oid) for c in debezium_relation(("tenant", 25)).columns])
    ident = uuid4()
    message = bound.to_message({"id": ident, "aggregatetype": "Order", "aggregateid": "42",
                                "type": "OrderCreated", "payload": '{"x": 1}',
                                "tenant": "acme"}, 77)
    assert (message.id, message.topic, message.key) == (ident, "Order", "42")
    assert message.payload == b'{"x": 1}' and message.position == 77
    assert message.headers == {"type": "OrderCreated", "tenant": "acme", "id": str(ident)}


def test_debezium_text_ids_become_stable_uuids_and_missing_topics_are_errors():
    bound = DebeziumMapping(TableName("app", "outbox")).bind(
        [("id", 25), ("aggregatetype", 25), ("aggregateid", 25), ("payload", 25)])
    row = {"id": "evt-1", "aggregatetype": "A", "aggregateid": "1", "payload": "hi"}
    first, again = bound.to_message(row, 0), bound.to_message(row, 0)
    assert first.id == again.id and isinstance(first.id, UUID)
    assert first.content_type.startswith("text/plain")
    with pytest.raises(MappingError, match="aggregatetype"):
        bound.to_message({**row, "aggregatetype": None}, 0)


def test_a_table_without_the_needed_columns_is_refused():
    with pytest.raises(MappingError, match="aggregateid"):
        DebeziumMapping(TableName("app", "outbox")).bind([("id", 2950), ("payload", 3802),
                                                           ("aggregatetype", 25)])


# --- feed: inserts read straight from their bytes ----------------------------------------

def payloads_of(name):
    """The pgoutput messages of a recording, as the raw bytes the stream hands over."""
    parsed = (parse_copy_data(frame) for frame in read_frames(name))
    return [p.payload for p in parsed if not isinstance(p, PrimaryKeepalive)]


def fed_and_applied(payloads, table=RECORDED_TABLE):
    """What feed() queues, and what parse_pgoutput + apply() queue, for the same bytes;
    an exception counts as the outcome (its type and text)."""
    outcomes = []
    for use_feed in (True, False):
        decoder, out = decoder_for(table)
        try:
            for payload in payloads:
                if use_feed:
                    decoder.feed(payload)
                else:
                    decoder.apply(parse_pgoutput(payload))
        except Exception as exc:
            outcomes.append((type(exc), str(exc)))
        else:
            outcomes.append((drain(out), decoder.events))
    return outcomes


@pytest.mark.parametrize("recording", ["frames_binary.bin", "frames_text.bin"])
def test_feeding_raw_messages_queues_what_the_general_path_does(recording):
    fed, applied = fed_and_applied(payloads_of(recording))
    assert fed == applied
    assert len([e for e in fed[0] if isinstance(e, OutboxMessage)]) == 5


COLUMNS = (("id", 2950), ("topic", 25), ("key", 25), ("payload", 114), ("payload_bytes", 17),
           ("headers", 3802), ("created_at", 1184), ("sent_at", 1184), ("parked_at", 1184),
           ("bucket", 21))
RELATION = Relation(42, "public", "outbox", "d",
                    tuple(RelationColumn(0, name, oid, -1) for name, oid in COLUMNS))


def binary(value):
    return b"b" + struct.pack("!I", len(value)) + value


GOOD_ROW = {
    "id": binary(bytes(range(16))), "topic": binary(b"orders"), "key": binary(b"k-1"),
    "payload": binary(b'{"a": 1}'), "payload_bytes": b"n", "headers": binary(b'\x01{"h": 1}'),
    "created_at": binary(struct.pack("!q", 767_836_800_000_000)), "sent_at": b"n",
    "parked_at": b"n", "bucket": binary(struct.pack("!h", 3)),
}


def insert_bytes(relation_id=42, tag=b"N", count=None, **columns):
    row = {**GOOD_ROW, **columns}
    values = [row[name] for name, _ in COLUMNS]
    head = struct.pack("!cIcH", b"I", relation_id, tag, len(values) if count is None else count)
    return head + b"".join(values)


def relation_bytes():
    out = b"R" + struct.pack("!I", 42) + b"public\0outbox\0d" + struct.pack("!H", len(COLUMNS))
    for name, oid in COLUMNS:
        out += b"\0" + name.encode() + b"\0" + struct.pack("!Ii", oid, -1)
    return out


INSERTS = [
    insert_bytes(),
    insert_bytes(key=b"n", headers=b"n"),
    insert_bytes(topic=b"t\x00\x00\x00\x06orders"),  # a text value: the general path
    insert_bytes(payload=b"u"),  # unchanged TOAST: the general path says what it is
    insert_bytes(id=binary(b"\x01" * 15)),  # a bad uuid: parked with the raw row
    insert_bytes(id=binary(b"\x01" * 17)),  # longer than a uuid: the same
    # a fixed-size column whose header says another size, in a column not even wanted
    insert_bytes(bucket=binary(b"\x00\x03\x00")),
    insert_bytes(bucket=binary(b"\x03")),
    insert_bytes(id=b"n"),  # no id: a MappingError, parked with the raw row
    insert_bytes(created_at=binary(struct.pack("!q", 2**63 - 1))),  # infinity: parked
    insert_bytes(created_at=binary(b"\x00" * 7)),
    insert_bytes(sent_at=binary(struct.pack("!q", 0))),  # inserted as sent: no event
    insert_bytes(bucket=b"x"),  # an unknown kind, in a column not even wanted
    insert_bytes(count=9),
    insert_bytes(count=11),
    insert_bytes(tag=b"K"),
    insert_bytes(relation_id=43),  # not the captured table
    insert_bytes() + b"\x00",  # trailing bytes
    insert_bytes()[:-1],  # truncated
    insert_bytes(payload=b"b\xff\xff\xff\xff{}"),  # a length past the end
    b"I\x00\x00\x00",  # too short to hold a relation id and a tuple
]


@pytest.mark.parametrize("insert", INSERTS)
def test_feeding_an_insert_matches_the_general_path(insert):
    relation = relation_bytes()
    assert parse_pgoutput(relation) == RELATION
    fed, applied = fed_and_applied([relation, b"B" + struct.pack("!QqI", 700, 0, 3), insert],
                                   TableName("public", "outbox"))
    assert fed == applied


def captured_outbox():
    decoder, _ = decoder_for(TableName("public", "outbox"))
    decoder.feed(relation_bytes())
    return decoder._captured[42]


@pytest.mark.parametrize("insert", INSERTS)
def test_whatever_the_direct_path_reads_the_general_path_reads_the_same(insert):
    try:
        row = parse_pgoutput(insert).new
    except PgOutputProtocolError:
        return  # malformed: the direct path must not read it (compared above)
    captured = captured_outbox()
    direct = captured.read_insert(insert)
    if direct is not None:
        assert direct == captured.decode(row)


def test_plain_rows_take_the_direct_path(monkeypatch):
    captured = captured_outbox()
    for insert in (insert_bytes(), insert_bytes(key=b"n", headers=b"n")):
        direct = captured.read_insert(insert)
        assert direct is not None and "bucket" not in direct  # a column not read
    assert captured.read_insert(insert_bytes(topic=b"t\x00\x00\x00\x06orders")) is None
    assert captured.read_insert(insert_bytes(payload=b"u")) is None
    parsed = []
    monkeypatch.setattr(changes, "parse_pgoutput",
                        lambda data: parsed.append(data[:1]) or parse_pgoutput(data))
    decoder, _ = decoder_for(TableName("public", "outbox"))
    for message in (relation_bytes(), insert_bytes(), insert_bytes(key=b"n")):
        decoder.feed(message)
    assert parsed == [b"R"] and decoder.events == 2


NON_ASCII_JSON = '{"name": "Zoë Ærøskøbing", "note": "東京 ✓"}'.encode()


@pytest.mark.parametrize(("payload_oid", "prefix"), [(114, b""), (3802, b"\x01")])
def test_a_json_payload_is_published_as_its_utf8_text_in_either_format(payload_oid, prefix):
    # json (and jsonb after its version byte) are taken as the bytes of their text on the
    # stream: the published payload must be those UTF-8 bytes, as the text format gives.
    columns = tuple((name, payload_oid if name == "payload" else oid) for name, oid in COLUMNS)
    relation = b"R" + struct.pack("!I", 42) + b"public\0outbox\0d" + struct.pack("!H", len(columns))
    for name, oid in columns:
        relation += b"\0" + name.encode() + b"\0" + struct.pack("!Ii", oid, -1)
    as_binary = insert_bytes(payload=binary(prefix + NON_ASCII_JSON))
    as_text = insert_bytes(payload=b"t" + struct.pack("!I", len(NON_ASCII_JSON)) + NON_ASCII_JSON)
    messages = [relation, b"B" + struct.pack("!QqI", 700, 0, 3), as_binary, as_text]
    if prefix:  # a jsonb version the relay does not know: parked, not published
        messages.append(insert_bytes(payload=binary(b"\x02" + NON_ASCII_JSON)))
    decoder, out = decoder_for(TableName("public", "outbox"))
    for message in messages:
        decoder.feed(message)
    queued = drain(out)
    assert [e.payload for e in queued if isinstance(e, OutboxMessage)] == [NON_ASCII_JSON] * 2
    assert len([e for e in queued if isinstance(e, Unmappable)]) == len(messages) - 4


def test_a_delayed_insert_is_not_published_and_pokes_the_scheduler():
    """Migration 8's trigger marks a delayed row sent: no event, but the leader's
    scheduler learns that a message now waits (relay.scheduler)."""
    names = CdcSettings(table="public.outbox").resolve("outbox")
    out, pokes = Outgoing(), []
    decoder = ChangeDecoder(names, OutboxTableMapping(TableName("public", "outbox")), out,
                            on_delayed=lambda: pokes.append(1))
    decoder.feed(relation_bytes())
    decoder.feed(insert_bytes(sent_at=binary(struct.pack("!q", 0))))
    assert (out.backlog, len(pokes)) == (0, 1)
    decoder.feed(insert_bytes(sent_at=binary(struct.pack("!q", 0)),
                              parked_at=binary(struct.pack("!q", 0))))  # parked: no poke
    decoder.feed(insert_bytes())
    assert (out.backlog, len(pokes)) == (1, 1)
