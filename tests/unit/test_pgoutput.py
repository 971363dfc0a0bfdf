"""Decode replication frames recorded from PostgreSQL 15 (tests/unit/data/pgoutput/record.py).

The expected values mirror the workload in record.py; change both together.
"""

import base64
import contextlib
import random
import struct
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest

from relay.cdc.frames import wal_data_payload
from relay.cdc.pgoutput import (
    KIND_BINARY,
    KIND_TEXT,
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputProtocolError,
    PrimaryKeepalive,
    Relation,
    Truncate,
    Type,
    Update,
    XLogData,
    parse_copy_data,
    parse_pgoutput,
)
from relay.cdc.values import ColumnValueError, decode_binary, decode_column, decode_tuple

DATA = Path(__file__).parent / "data" / "pgoutput"
OUTBOX_COLUMNS = [
    ("id", 2950),
    ("seq", 20),
    ("topic", 25),
    ("key", 25),
    ("payload", 3802),
    ("payload_bytes", 17),
    ("headers", 3802),
    ("created_at", 1184),
]


def big_blob(seed, size):
    """Same generator as record.py: the TOASTed values."""
    return base64.b64encode(random.Random(seed).randbytes(size * 3 // 4)).decode()


EXPECTED_OUTBOX_ROWS = [
    {
        "id": UUID("11111111-1111-4111-8111-111111111111"),
        "seq": 1,
        "topic": "orders",
        "key": "order-1",
        "payload": '{"items": [1, 2], "total": 12.5}',  # jsonb reorders keys
        "payload_bytes": None,
        "headers": '{"trace": "abc"}',
        "created_at": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    },
    {
        "id": UUID("22222222-2222-4222-8222-222222222222"),
        "seq": 2,
        "topic": "blobs",
        "key": None,
        "payload": None,
        "payload_bytes": b"\x00\xff\x10binary\x00",
        "headers": None,
        "created_at": datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC),
    },
    {
        "id": UUID("33333333-3333-4333-8333-333333333333"),
        "seq": 3,
        "topic": "événements",
        "key": "clé-ü",
        "payload": '{"msg": "héllo ☃"}',
        "payload_bytes": b"",
        "headers": "{}",
        "created_at": datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    },
    {
        "id": UUID("44444444-4444-4444-8444-444444444444"),
        "seq": 4,
        "topic": "big",
        "key": "big-1",
        "payload": f'{{"blob": "{big_blob("outbox", 12_000)}"}}',
        "payload_bytes": None,
        "headers": None,
        "created_at": datetime(2024, 5, 6, 7, 8, 11, tzinfo=UTC),
    },
    {
        "id": UUID("55555555-5555-4555-8555-555555555555"),
        "seq": 5,
        "topic": "orders",
        "key": "order-5",
        "payload": '{"deleted": true}',
        "payload_bytes": None,
        "headers": None,
        "created_at": datetime(2024, 5, 6, 7, 8, 12, tzinfo=UTC),
    },
]


def read_frames(name):
    data = (DATA / name).read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("!I", data, pos)
        frames.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return frames


def decode_stream(name):
    """Each frame decoded: keepalives as they are, XLogData as their pgoutput message."""
    decoded = []
    for frame in read_frames(name):
        parsed = parse_copy_data(frame)
        decoded.append(
            parsed if isinstance(parsed, PrimaryKeepalive) else parse_pgoutput(parsed.payload)
        )
    return decoded


def messages_of(name):
    return [m for m in decode_stream(name) if not isinstance(m, PrimaryKeepalive)]


def outbox_rows(name):
    messages = messages_of(name)
    relation = next(m for m in messages if isinstance(m, Relation))
    return [decode_tuple(relation, m.new) for m in messages if isinstance(m, Insert)]


OUTBOX_SEQUENCE = [
    Begin, Relation, Insert, Insert, Insert, Commit,  # three rows in one transaction
    Begin, Insert, Commit,  # the TOASTed payload
    Begin, Insert, Commit,  # insert + delete: the publication only publishes inserts
    Begin, Message, Commit,  # transactional message
    Message,  # non-transactional message: outside any transaction
]  # fmt: skip


@pytest.mark.parametrize("name", ["frames_binary.bin", "frames_text.bin"])
def test_outbox_stream_has_the_expected_message_sequence(name):
    assert [type(m) for m in messages_of(name)] == OUTBOX_SEQUENCE


def test_binary_stream_decodes_every_outbox_value():
    assert outbox_rows("frames_binary.bin") == EXPECTED_OUTBOX_ROWS


def test_text_stream_decodes_to_the_same_values():
    assert outbox_rows("frames_text.bin") == EXPECTED_OUTBOX_ROWS


@pytest.mark.parametrize(
    ("name", "kind"), [("frames_binary.bin", KIND_BINARY), ("frames_text.bin", KIND_TEXT)]
)
def test_every_non_null_value_uses_the_requested_format(name, kind):
    inserts = [m for m in messages_of(name) if isinstance(m, Insert)]
    for insert in inserts:
        for value, value_kind in zip(insert.new.values, insert.new.kinds, strict=True):
            assert value_kind == (kind if value is not None else ord("n"))


def test_toasted_payload_arrives_in_full_on_insert():
    inserts = [m for m in messages_of("frames_binary.bin") if isinstance(m, Insert)]
    payload = inserts[3].new.values[4]
    assert payload is not UNCHANGED_TOAST
    assert len(payload) > 12_000
    assert payload[:1] == b"\x01"  # jsonb binary format version


def test_relation_describes_the_outbox_table():
    relation = next(m for m in messages_of("frames_binary.bin") if isinstance(m, Relation))
    assert (relation.namespace, relation.name, relation.replica_identity) == (
        "public",
        "outbox",
        "d",
    )
    assert [(c.name, c.type_oid) for c in relation.columns] == OUTBOX_COLUMNS
    assert [c.name for c in relation.columns if c.is_key] == ["id"]
    assert all(c.type_modifier == -1 for c in relation.columns)
    inserts = [m for m in messages_of("frames_binary.bin") if isinstance(m, Insert)]
    assert {i.relation_id for i in inserts} == {relation.relation_id}


def test_begin_and_commit_agree_on_each_transaction():
    messages = messages_of("frames_binary.bin")
    begins = [m for m in messages if isinstance(m, Begin)]
    commits = [m for m in messages if isinstance(m, Commit)]
    assert len(begins) == len(commits) == 4
    for begin, commit in zip(begins, commits, strict=True):
        assert commit.commit_lsn == begin.final_lsn
        assert commit.end_lsn > commit.commit_lsn
        assert commit.commit_ts == begin.commit_ts
        assert commit.flags == 0
        assert commit.commit_time.tzinfo is UTC
        assert commit.commit_time.year >= 2024
    assert [b.xid for b in begins] == sorted({b.xid for b in begins})
    assert [c.commit_lsn for c in commits] == sorted(c.commit_lsn for c in commits)


def test_logical_messages_keep_prefix_content_and_transactionality():
    messages = messages_of("frames_binary.bin")
    emitted = [m for m in messages if isinstance(m, Message)]
    assert [(m.transactional, m.prefix, m.content) for m in emitted] == [
        (True, "outbox", b'{"event": "transactional"}'),
        (False, "outbox", b"\x00raw\xffbytes"),
    ]
    transactional_commit = messages[messages.index(emitted[0]) + 1]
    assert isinstance(transactional_commit, Commit)
    assert emitted[0].lsn <= transactional_commit.commit_lsn
    assert emitted[1].lsn > transactional_commit.end_lsn


def test_xlogdata_frames_carry_lsns_and_a_view_of_the_payload():
    frames = [parse_copy_data(f) for f in read_frames("frames_binary.bin")]
    xlogdata = [f for f in frames if isinstance(f, XLogData)]
    assert len(xlogdata) == len(OUTBOX_SEQUENCE)
    for frame in xlogdata:
        assert isinstance(frame.payload, memoryview)
        assert frame.wal_start == frame.wal_end  # pgoutput frames are points, not ranges
        assert frame.server_clock > 0
    # Relation messages are written outside any WAL position.
    relation_frame = xlogdata[OUTBOX_SEQUENCE.index(Relation)]
    assert relation_frame.wal_start == 0


def test_the_session_s_quick_read_of_xlogdata_agrees_with_the_full_parse():
    frames = read_frames("frames_binary.bin")
    for raw in frames:
        parsed = parse_copy_data(raw)
        quick = wal_data_payload(memoryview(raw))
        if isinstance(parsed, XLogData):
            assert quick == (parsed.wal_end, bytes(parsed.payload))
        else:
            assert quick is None  # keepalives go through parse_copy_data
    # Frames without a whole header and a payload are left to parse_copy_data too.
    xlogdata = next(raw for raw in frames if raw[:1] == b"w")
    for size in range(26):
        assert wal_data_payload(memoryview(xlogdata[:size])) is None


def test_recorded_keepalives_parse():
    frames = [parse_copy_data(f) for f in read_frames("frames_binary.bin")]
    keepalives = [f for f in frames if isinstance(f, PrimaryKeepalive)]
    assert keepalives, "the recording ends on a keepalive"
    assert isinstance(frames[-1], PrimaryKeepalive)
    last_commit = [m for m in messages_of("frames_binary.bin") if isinstance(m, Commit)][-1]
    assert frames[-1].wal_end >= last_commit.end_lsn
    assert not any(k.reply_requested for k in keepalives)


def test_probe_stream_covers_updates_deletes_origin_type_and_truncate():
    messages = messages_of("frames_probe.bin")
    assert [type(m) for m in messages] == [
        Begin, Type, Relation, Insert, Commit,
        Begin, Update, Commit,
        Begin, Update, Commit,
        Begin, Delete, Commit,
        Begin, Origin, Insert, Commit,
        Begin, Type, Relation, Truncate, Commit,  # TRUNCATE invalidates the relation: sent again
    ]  # fmt: skip
    type_message, relation = messages[1], messages[2]
    assert (type_message.namespace, type_message.name) == ("public", "mood")
    assert relation.columns[1].type_oid == type_message.type_oid


def test_probe_insert_sends_enum_in_binary_and_the_toasted_text_in_full():
    messages = messages_of("frames_probe.bin")
    relation, insert = messages[2], messages[3]
    assert insert.new.kinds == b"bbbbb"  # enum_send exists, so even the enum is binary
    assert insert.new.values[1] == b"happy"
    assert decode_binary(25, insert.new.values[2]) == big_blob("probe", 12_000)
    with pytest.raises(
        ColumnValueError, match=f"no binary decoder for type oid {relation.columns[1].type_oid}"
    ):
        decode_tuple(relation, insert.new)


def test_update_leaving_a_toasted_column_alone_marks_it_unchanged():
    messages = messages_of("frames_probe.bin")
    update = messages[6]
    assert (update.old_kind, update.old) == (None, None)
    assert update.new.values[2] is UNCHANGED_TOAST
    assert update.new.kinds == b"bbubb"
    assert decode_column(25, update.new.kinds[2], update.new.values[2]) is UNCHANGED_TOAST
    assert decode_binary(21, update.new.values[4]) == 8
    assert decode_binary(16, update.new.values[3]) is False


def test_key_update_and_delete_carry_the_old_key():
    messages = messages_of("frames_probe.bin")
    key_update, delete = messages[9], messages[12]
    assert key_update.old_kind == "K"
    assert key_update.old.values == (b"\x00\x00\x00\x01", None, None, None, None)
    assert decode_binary(23, key_update.new.values[0]) == 2
    assert delete.old_kind == "K"
    assert delete.old.values[0] == b"\x00\x00\x00\x02"
    assert delete.relation_id == key_update.relation_id


def test_origin_and_truncate():
    messages = messages_of("frames_probe.bin")
    origin, truncate, relation = messages[15], messages[21], messages[2]
    assert origin == Origin(commit_lsn=0xABCDEF, name="upstream")
    assert truncate == Truncate((relation.relation_id,), cascade=False, restart_identity=True)


def test_probe_stream_without_messages_option_has_no_logical_messages():
    assert not any(isinstance(m, Message) for m in messages_of("frames_probe.bin"))


def recorded_payloads():
    for name in ["frames_binary.bin", "frames_text.bin", "frames_probe.bin"]:
        for frame in read_frames(name):
            parsed = parse_copy_data(frame)
            if isinstance(parsed, XLogData):
                yield bytes(parsed.payload)


def test_every_truncation_of_a_recorded_message_is_a_protocol_error():
    for payload in recorded_payloads():
        for size in range(len(payload)):
            with pytest.raises(PgOutputProtocolError):
                parse_pgoutput(payload[:size])


def test_trailing_bytes_are_a_protocol_error():
    for payload in recorded_payloads():
        with pytest.raises(PgOutputProtocolError, match="trailing"):
            parse_pgoutput(payload + b"\x00")


def test_every_truncation_of_a_recorded_frame_header_is_a_protocol_error():
    for frame in read_frames("frames_binary.bin"):
        header = 25 if frame[:1] == b"w" else len(frame)
        for size in range(header):
            with pytest.raises(PgOutputProtocolError):
                parse_copy_data(frame[:size])


def test_random_garbage_raises_only_protocol_errors():
    rng = random.Random(20240506)
    tags = b"BCORYIUDTMwkx"
    for _ in range(5000):
        data = bytes([rng.choice(tags)]) + rng.randbytes(rng.randrange(0, 40))
        for parse in (parse_pgoutput, parse_copy_data):
            with contextlib.suppress(PgOutputProtocolError):
                parse(data)  # anything but a PgOutputProtocolError fails the test
