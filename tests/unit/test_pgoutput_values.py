"""Column value decoders for pgoutput tuples, in binary send and text output formats."""

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import psycopg
import pytest
from psycopg import pq

from relay.cdc import values
from relay.cdc.pgoutput import (
    KIND_BINARY,
    KIND_NULL,
    KIND_TEXT,
    KIND_UNCHANGED_TOAST,
    UNCHANGED_TOAST,
    PgOutputProtocolError,
    Relation,
    RelationColumn,
    TupleData,
)
from relay.cdc.values import (
    ColumnValueError,
    decode_binary,
    decode_column,
    decode_text,
    decode_tuple,
)

UUID_VALUE = UUID("0c3f1c2e-8d4b-4a5f-9e2d-6b7a8c9d0e1f")


@pytest.mark.parametrize(
    ("oid", "binary", "text", "expected"),
    [
        (16, b"\x01", b"t", True),
        (16, b"\x00", b"f", False),
        (17, b"\x00\xff", b"\\x00ff", b"\x00\xff"),
        (19, b"public", b"public", "public"),
        (20, (-(2**63)).to_bytes(8, "big", signed=True), b"-9223372036854775808", -(2**63)),
        (21, b"\xff\xfe", b"-2", -2),
        (23, b"\x7f\xff\xff\xff", b"2147483647", 2**31 - 1),
        (25, "ü".encode(), "ü".encode(), "ü"),
        (26, b"\xff\xff\xff\xff", b"4294967295", 2**32 - 1),
        (114, b'{"a" : 1}', b'{"a" : 1}', '{"a" : 1}'),
        (1042, b"ab  ", b"ab  ", "ab  "),
        (1043, b"v", b"v", "v"),
        (2950, UUID_VALUE.bytes, str(UUID_VALUE).encode(), UUID_VALUE),
        (3802, b'\x01{"a": 1}', b'{"a": 1}', '{"a": 1}'),
        (
            1184,
            (767_836_800_000_000 + 5).to_bytes(8, "big", signed=True),
            b"2024-05-01 00:00:00.000005+00",
            datetime(2024, 5, 1, 0, 0, 0, 5, tzinfo=UTC),
        ),
        (
            1114,
            (0).to_bytes(8, "big", signed=True),
            b"2000-01-01 00:00:00",
            datetime(2000, 1, 1),
        ),
    ],
)
def test_binary_and_text_formats_decode_to_the_same_value(oid, binary, text, expected):
    assert decode_binary(oid, binary) == expected
    assert decode_text(oid, text) == expected


def test_timestamptz_text_keeps_a_non_utc_offset():
    decoded = decode_text(1184, b"2024-05-06 09:08:09+02")
    assert decoded == datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize(
    ("oid", "data", "match"),
    [
        (23, b"\x00\x01", "bad binary int4 value"),
        (20, b"\x00", "bad binary int8"),
        (16, b"", "bool has 0 bytes"),
        (2950, b"\x00" * 15, "bad binary uuid"),
        (3802, b'\x02{"a": 1}', "unsupported jsonb binary version"),
        (25, b"\xff", "bad binary text"),
        (1184, (2**63 - 1).to_bytes(8, "big"), "bad binary timestamptz"),  # 'infinity'
        (1184, (-(2**63)).to_bytes(8, "big", signed=True), "bad binary timestamptz"),
        (1114, (2**63 - 1).to_bytes(8, "big"), "bad binary timestamp"),
        # psycopg's C loaders do not check lengths: ours must, before they read
        (1184, b"\x00" * 7, "timestamp has 7 bytes"),
        (1114, b"\x00" * 9, "timestamp has 9 bytes"),
        (2950, b"\x00" * 17, "bad binary uuid"),
    ],
)
def test_bad_binary_values_raise_column_value_error(oid, data, match):
    with pytest.raises(ColumnValueError, match=match):
        decode_binary(oid, data)


@pytest.mark.parametrize(
    ("oid", "data", "match"),
    [
        (16, b"true", "bad text bool"),
        (17, b"\\000", "bytea_output=hex"),
        (17, b"\\x0", "bad text bytea"),
        (23, b"four", "bad text int4"),
        (1184, b"infinity", "bad text timestamptz"),
        (1184, b"2024-05-06 07:08:09", "without a UTC offset"),
        (2950, b"not-a-uuid", "bad text uuid"),
    ],
)
def test_bad_text_values_raise_column_value_error(oid, data, match):
    with pytest.raises(ColumnValueError, match=match):
        decode_text(oid, data)


def test_unknown_type_names_the_oid_and_format():
    with pytest.raises(ColumnValueError, match="no binary decoder for type oid 1700"):
        decode_binary(1700, b"")
    with pytest.raises(ColumnValueError, match="no text decoder for type oid 1700"):
        decode_text(1700, b"1.5")


def test_column_value_error_is_a_protocol_error():
    assert issubclass(ColumnValueError, PgOutputProtocolError)


def test_decode_column_follows_the_kind_byte():
    assert decode_column(23, KIND_BINARY, b"\x00\x00\x00\x07") == 7
    assert decode_column(23, KIND_TEXT, b"7") == 7
    assert decode_column(23, KIND_NULL, None) is None
    assert decode_column(25, KIND_UNCHANGED_TOAST, UNCHANGED_TOAST) is UNCHANGED_TOAST
    with pytest.raises(ColumnValueError, match="does not match"):
        decode_column(23, KIND_BINARY, None)


def relation(*columns):
    return Relation(
        1, "public", "t", "d", tuple(RelationColumn(0, name, oid, -1) for name, oid in columns)
    )


def test_decode_tuple_maps_names_to_values():
    row = TupleData((b"\x00\x00\x00\x07", None, b"x"), b"bnt")
    assert decode_tuple(relation(("a", 23), ("b", 25), ("c", 25)), row) == {
        "a": 7,
        "b": None,
        "c": "x",
    }


def test_decode_tuple_rejects_a_row_that_does_not_fit_the_relation():
    row = TupleData((None,), b"n")
    with pytest.raises(ColumnValueError, match=r"row has 1 values but relation public\.t has 2"):
        decode_tuple(relation(("a", 23), ("b", 23)), row)


@pytest.mark.parametrize(
    ("type_oid", "value"),
    [
        (values.BOOL_OID, True),
        (values.INT2_OID, 3),
        (values.INT4_OID, 3),
        (values.OID_OID, 3),
        (values.INT8_OID, 3),
        (values.TIMESTAMP_OID, datetime(2026, 1, 1)),
        (values.TIMESTAMPTZ_OID, datetime(2026, 1, 1, tzinfo=UTC)),
        (values.UUID_OID, UUID(int=7)),
    ],
)
def test_a_fixed_binary_width_is_the_size_of_the_types_send_format(type_oid, value):
    # The stream skips these values by their type's width; psycopg's binary dumpers
    # write the same send format the server does.
    dumper = psycopg.adapters.get_dumper_by_oid(type_oid, pq.Format.BINARY)(type(value))
    assert values.binary_width(type_oid) == len(dumper.dump(value))


def test_types_of_varying_size_have_no_fixed_width():
    for type_oid in (values.TEXT_OID, values.BYTEA_OID, values.JSON_OID, values.JSONB_OID):
        assert values.binary_width(type_oid) == 0
