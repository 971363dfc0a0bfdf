"""Hand-built replication frames and pgoutput messages: the cases a recording cannot show."""

from datetime import UTC, datetime

import pytest

from relay.cdc.pgoutput import (
    PG_EPOCH,
    UNCHANGED_TOAST,
    Insert,
    PgOutputProtocolError,
    PrimaryKeepalive,
    Update,
    XLogData,
    encode_standby_status,
    lsn_to_str,
    parse_copy_data,
    parse_pgoutput,
    pg_now,
    pg_timestamp_to_datetime,
    str_to_lsn,
)
from relay.errors import PermanentError


def int64(value):
    return value.to_bytes(8, "big", signed=True)


def uint64(value):
    return value.to_bytes(8, "big")


def test_keepalive_with_reply_requested():
    frame = b"k" + uint64(0x16_B374D848) + int64(5_000_000) + b"\x01"
    assert parse_copy_data(frame) == PrimaryKeepalive(0x16_B374D848, 5_000_000, True)


def test_keepalive_of_the_wrong_size_is_rejected():
    frame = b"k" + uint64(1) + int64(2) + b"\x00"
    with pytest.raises(PgOutputProtocolError, match="18"):
        parse_copy_data(frame + b"\x00")


def test_xlogdata_payload_is_a_view_into_the_frame():
    frame = memoryview(b"w" + uint64(10) + uint64(20) + int64(30) + b"Cpayload")
    parsed = parse_copy_data(frame)
    assert isinstance(parsed, XLogData)
    assert (parsed.wal_start, parsed.wal_end, parsed.server_clock) == (10, 20, 30)
    assert parsed.payload == b"Cpayload"
    assert parsed.payload.obj is frame.obj  # no copy


def test_standby_status_update_layout():
    encoded = encode_standby_status(0x1_00000010, 0x1_00000008, 0x1_00000004, clock=77)
    expected = (
        b"r"
        + uint64(0x1_00000010)
        + uint64(0x1_00000008)
        + uint64(0x1_00000004)
        + int64(77)
        + b"\x00"
    )
    assert encoded == expected
    assert encode_standby_status(1, 1, 1, reply=True, clock=77)[-1:] == b"\x01"


def test_standby_status_clock_defaults_to_now():
    before = pg_now()
    encoded = encode_standby_status(0, 0, 0)
    clock = int.from_bytes(encoded[25:33], "big", signed=True)
    assert before <= clock <= pg_now()
    now = datetime.now(UTC)
    assert abs((pg_timestamp_to_datetime(clock) - now).total_seconds()) < 60


def test_standby_status_rejects_negative_lsn():
    with pytest.raises(ValueError, match="out of range"):
        encode_standby_status(-1, 0, 0, clock=0)


def test_pg_timestamps_count_from_2000():
    assert pg_timestamp_to_datetime(0) == PG_EPOCH == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_timestamp_to_datetime(-1) == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "lsn"),
    [("0/0", 0), ("16/B374D848", 0x16_B374D848), ("FFFFFFFF/FFFFFFFF", 2**64 - 1)],
)
def test_lsn_text_round_trip(text, lsn):
    assert str_to_lsn(text) == lsn
    assert lsn_to_str(lsn) == text


def test_lsn_text_accepts_lowercase():
    assert str_to_lsn("16/b374d848") == 0x16_B374D848


@pytest.mark.parametrize(
    "text", ["", "16", "16/", "/1", "1/2/3", "G/0", "123456789/0", " 1/0", "0x1/0"]
)
def test_lsn_text_rejects_garbage(text):
    with pytest.raises(ValueError, match="not an LSN"):
        str_to_lsn(text)


@pytest.mark.parametrize("lsn", [-1, 2**64])
def test_lsn_out_of_range(lsn):
    with pytest.raises(ValueError, match="out of range"):
        lsn_to_str(lsn)


def test_unknown_replication_frame_is_named():
    with pytest.raises(PgOutputProtocolError, match=r"unknown replication frame type 'x' \(0x78\)"):
        parse_copy_data(b"x" + bytes(24))


@pytest.mark.parametrize("parse", [parse_copy_data, parse_pgoutput])
def test_empty_input_is_a_protocol_error(parse):
    with pytest.raises(PgOutputProtocolError, match="empty"):
        parse(b"")


def test_unknown_message_type_is_named():
    with pytest.raises(PgOutputProtocolError, match=r"unknown pgoutput message type 'Z' \(0x5a\)"):
        parse_pgoutput(b"Z\x00\x00")
    with pytest.raises(PgOutputProtocolError, match=r"unknown pgoutput message type 0x00$"):
        parse_pgoutput(b"\x00")


@pytest.mark.parametrize(
    ("tag", "option"), [(b"S", "streaming"), (b"c", "streaming"), (b"P", "two_phase")]
)
def test_messages_of_later_protocol_versions_say_which_option_sends_them(tag, option):
    with pytest.raises(PgOutputProtocolError, match=f"only sent with the '{option}' option"):
        parse_pgoutput(tag + bytes(20))


def test_protocol_error_is_permanent():
    assert issubclass(PgOutputProtocolError, PermanentError)


def tuple_data(*columns):
    return len(columns).to_bytes(2, "big") + b"".join(columns)


def value(kind, data):
    return kind + len(data).to_bytes(4, "big") + data


def test_insert_with_every_column_kind():
    payload = b"I" + (16384).to_bytes(4, "big") + b"N"
    payload += tuple_data(
        value(b"t", b"42"), b"n", b"u", value(b"b", b"\x00\x01"), value(b"t", b"")
    )
    insert = parse_pgoutput(payload)
    assert insert == Insert(16384, insert.new)
    assert insert.new.values == (b"42", None, UNCHANGED_TOAST, b"\x00\x01", b"")
    assert insert.new.kinds == b"tnubt"


def test_insert_with_an_unknown_column_kind_is_named():
    payload = b"I" + (1).to_bytes(4, "big") + b"N" + tuple_data(b"x")
    with pytest.raises(
        PgOutputProtocolError, match=r"unknown column kind 'x' \(0x78\) in column 0"
    ):
        parse_pgoutput(payload)


def test_insert_without_new_tuple_tag_is_rejected():
    payload = b"I" + (1).to_bytes(4, "big") + b"K" + tuple_data(b"n")
    with pytest.raises(PgOutputProtocolError, match="tuple tag 'K'"):
        parse_pgoutput(payload)


def test_update_with_full_old_row():
    payload = b"U" + (7).to_bytes(4, "big")
    payload += b"O" + tuple_data(value(b"t", b"old"))
    payload += b"N" + tuple_data(value(b"t", b"new"))
    update = parse_pgoutput(payload)
    assert isinstance(update, Update)
    assert (update.relation_id, update.old_kind) == (7, "O")
    assert update.old.values == (b"old",)
    assert update.new.values == (b"new",)


def test_value_length_past_the_end_is_truncation():
    payload = (
        b"I" + (1).to_bytes(4, "big") + b"N" + tuple_data(b"t" + (2**32 - 1).to_bytes(4, "big"))
    )
    with pytest.raises(PgOutputProtocolError, match="truncated"):
        parse_pgoutput(payload + b"abc")


def test_truncate_with_an_impossible_count_is_rejected():
    with pytest.raises(PgOutputProtocolError, match="relation ids do not fit"):
        parse_pgoutput(b"T" + (2**32 - 1).to_bytes(4, "big") + b"\x00")


def test_string_without_terminator_is_rejected():
    payload = b"Y" + (1).to_bytes(4, "big") + b"public\x00mood"
    with pytest.raises(PgOutputProtocolError, match="no terminating NUL"):
        parse_pgoutput(payload)


def test_long_message_prefix_is_read_past_the_search_window():
    prefix = "p" * 300
    payload = b"M\x01" + uint64(9) + prefix.encode() + b"\x00" + (2).to_bytes(4, "big") + b"hi"
    message = parse_pgoutput(payload)
    assert (message.prefix, message.content, message.transactional) == (prefix, b"hi", True)


def test_invalid_utf8_in_a_name_is_a_protocol_error():
    payload = b"Y" + (1).to_bytes(4, "big") + b"\xff\x00name\x00"
    with pytest.raises(PgOutputProtocolError, match="malformed pgoutput 'Y'"):
        parse_pgoutput(payload)
