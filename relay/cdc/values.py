"""Turn the raw column values of pgoutput tuples into Python values.

Covers the types an outbox table uses, in both formats pgoutput can send: the binary
send format (``binary 'true'``) and the text output format. Text values depend on the
walsender session's settings, so a CDC connection must pin ``client_encoding=UTF8``,
``DateStyle=ISO``, ``TimeZone=UTC`` and ``bytea_output=hex``; binary values only on
``client_encoding=UTF8`` (text-like types are sent converted to the client encoding).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from datetime import datetime
from struct import Struct
from struct import error as StructError
from typing import Final
from uuid import UUID

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer

from relay.cdc.pgoutput import (
    KIND_BINARY,
    KIND_NULL,
    KIND_TEXT,
    KIND_UNCHANGED_TOAST,
    UNCHANGED_TOAST,
    ColumnValue,
    PgOutputProtocolError,
    Relation,
    TupleData,
)

__all__ = [
    "ColumnValueError",
    "decode_binary",
    "decode_column",
    "decode_text",
    "decode_tuple",
]


class ColumnValueError(PgOutputProtocolError):
    """A column value could not be decoded, or its type has no decoder here."""


# Type OIDs from pg_type.dat; stable across PostgreSQL versions.
BOOL_OID: Final = 16
BYTEA_OID: Final = 17
NAME_OID: Final = 19
INT8_OID: Final = 20
INT2_OID: Final = 21
INT4_OID: Final = 23
TEXT_OID: Final = 25
OID_OID: Final = 26
JSON_OID: Final = 114
BPCHAR_OID: Final = 1042
VARCHAR_OID: Final = 1043
TIMESTAMP_OID: Final = 1114
TIMESTAMPTZ_OID: Final = 1184
UUID_OID: Final = 2950
JSONB_OID: Final = 3802

_TYPE_NAMES: Final = {
    BOOL_OID: "bool",
    BYTEA_OID: "bytea",
    NAME_OID: "name",
    INT8_OID: "int8",
    INT2_OID: "int2",
    INT4_OID: "int4",
    TEXT_OID: "text",
    OID_OID: "oid",
    JSON_OID: "json",
    BPCHAR_OID: "bpchar",
    VARCHAR_OID: "varchar",
    TIMESTAMP_OID: "timestamp",
    TIMESTAMPTZ_OID: "timestamptz",
    UUID_OID: "uuid",
    JSONB_OID: "jsonb",
}

_INT2: Final = Struct("!h")
_INT4: Final = Struct("!i")
_INT8: Final = Struct("!q")
_UINT4: Final = Struct("!I")
_JSONB_VERSION: Final = b"\x01"


# bytes.decode itself, not a function around it: no Python frame per text value.
_utf8: Final[Callable[[bytes], str]] = bytes.decode


def _bool_binary(data: bytes) -> bool:
    if len(data) != 1:
        raise ValueError(f"bool has {len(data)} bytes, expected 1")
    return data != b"\x00"


def _jsonb_binary_bytes(data: bytes) -> bytes:
    if data[:1] != _JSONB_VERSION:
        raise ValueError(f"unsupported jsonb binary version {data[:1]!r}")
    return data[1:]


def _jsonb_binary(data: bytes) -> str:
    return _jsonb_binary_bytes(data).decode()


def _psycopg_binary_loader(type_oid: int) -> Callable[[bytes], object]:
    """psycopg's own loader (in C with psycopg[binary]): the values polling mode gets,
    at a fraction of the cost of building them in Python (benchmarks/README.md). A
    Transformer without a connection reads timestamptz in UTC."""
    return Transformer().get_loader(type_oid, pq.Format.BINARY).load


_load_uuid: Final = _psycopg_binary_loader(UUID_OID)
_load_timestamptz: Final = _psycopg_binary_loader(TIMESTAMPTZ_OID)
_load_timestamp: Final = _psycopg_binary_loader(TIMESTAMP_OID)


def _checked_timestamp(load: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def decode(data: bytes) -> object:
        # The C loaders trust the server for the length: a wrong one must not be read.
        if len(data) != 8:
            raise ValueError(f"timestamp has {len(data)} bytes, expected 8")
        try:
            return load(data)
        except psycopg.DataError as exc:  # infinity, or beyond what datetime holds
            raise OverflowError(str(exc)) from None

    return decode


def _uuid_binary(data: bytes) -> object:
    if len(data) != 16:  # not every psycopg build checks
        raise ValueError(f"uuid has {len(data)} bytes, expected 16")
    return _load_uuid(data)


_timestamptz_binary: Final = _checked_timestamp(_load_timestamptz)
_timestamp_binary: Final = _checked_timestamp(_load_timestamp)


_BINARY_DECODERS: Final[dict[int, Callable[[bytes], object]]] = {
    BOOL_OID: _bool_binary,
    BYTEA_OID: bytes,
    NAME_OID: _utf8,
    INT8_OID: lambda data: _INT8.unpack(data)[0],
    INT2_OID: lambda data: _INT2.unpack(data)[0],
    INT4_OID: lambda data: _INT4.unpack(data)[0],
    TEXT_OID: _utf8,
    OID_OID: lambda data: _UINT4.unpack(data)[0],
    JSON_OID: _utf8,
    BPCHAR_OID: _utf8,
    VARCHAR_OID: _utf8,
    TIMESTAMP_OID: _timestamp_binary,
    TIMESTAMPTZ_OID: _timestamptz_binary,
    UUID_OID: _uuid_binary,
    JSONB_OID: _jsonb_binary,
}


def _bool_text(data: bytes) -> bool:
    if data == b"t":
        return True
    if data == b"f":
        return False
    raise ValueError(f"bool text {data!r}")


def _bytea_text(data: bytes) -> bytes:
    if not data.startswith(b"\\x"):
        raise ValueError("bytea is not in hex format; set bytea_output=hex on the connection")
    return binascii.a2b_hex(data[2:])


def _timestamptz_text(data: bytes) -> datetime:
    value = datetime.fromisoformat(data.decode())
    if value.tzinfo is None:
        raise ValueError(f"timestamptz text without a UTC offset: {data!r}")
    return value


def _timestamp_text(data: bytes) -> datetime:
    return datetime.fromisoformat(data.decode())


_TEXT_DECODERS: Final[dict[int, Callable[[bytes], object]]] = {
    BOOL_OID: _bool_text,
    BYTEA_OID: _bytea_text,
    NAME_OID: _utf8,
    INT8_OID: int,
    INT2_OID: int,
    INT4_OID: int,
    TEXT_OID: _utf8,
    OID_OID: int,
    JSON_OID: _utf8,
    BPCHAR_OID: _utf8,
    VARCHAR_OID: _utf8,
    TIMESTAMP_OID: _timestamp_text,
    TIMESTAMPTZ_OID: _timestamptz_text,
    UUID_OID: lambda data: UUID(data.decode()),
    JSONB_OID: _utf8,
}


def decode_binary(type_oid: int, data: bytes) -> object:
    """Decode a value in its type's binary send format.

    json and jsonb come back as JSON text (``str``), timestamptz as an aware UTC
    ``datetime``, timestamp as a naive one, bytea as ``bytes``.
    """
    return _decode(_BINARY_DECODERS, "binary", type_oid, data)


# json's binary form is its text, already UTF-8 (client_encoding): ``bytes`` hands the
# value over as it is, with no Python frame.
_JSON_BYTES_DECODERS: Final[dict[int, Callable[[bytes], object]]] = {
    JSON_OID: bytes,
    JSONB_OID: _jsonb_binary_bytes,
}


def json_bytes_decoder(type_oid: int) -> Callable[[bytes], object] | None:
    """For a json or jsonb value that is only ever published: a binary decoder giving the
    UTF-8 bytes of its text rather than a ``str`` to encode again; None for other types."""
    return _JSON_BYTES_DECODERS.get(type_oid)


# The binary send format's length of the types whose values are all one size: the length
# a value's header repeats (pq_sendint32 before each) is known from the type alone.
_BINARY_WIDTHS: Final[dict[int, int]] = {
    BOOL_OID: 1, INT2_OID: 2, INT4_OID: 4, OID_OID: 4, INT8_OID: 8,
    TIMESTAMP_OID: 8, TIMESTAMPTZ_OID: 8, UUID_OID: 16,
}


def binary_width(type_oid: int) -> int:
    """The size of every binary value of the type; 0 for types of varying size."""
    return _BINARY_WIDTHS.get(type_oid, 0)


def binary_decoder(type_oid: int) -> Callable[[bytes], object] | None:
    """The bare binary decoder of a type (no error wrapping), to resolve once per relation
    rather than once per value; None when the type has none."""
    return _BINARY_DECODERS.get(type_oid)


def decode_text(type_oid: int, data: bytes) -> object:
    """Decode a value in its type's text output format; same results as ``decode_binary``."""
    return _decode(_TEXT_DECODERS, "text", type_oid, data)


def _decode(
    decoders: dict[int, Callable[[bytes], object]], fmt: str, type_oid: int, data: bytes
) -> object:
    decoder = decoders.get(type_oid)
    if decoder is None:
        raise ColumnValueError(f"no {fmt} decoder for type oid {type_oid}")
    try:
        return decoder(data)
    except (StructError, ValueError, OverflowError) as exc:
        # OverflowError: 'infinity' timestamps, which datetime cannot hold.
        name = _TYPE_NAMES[type_oid]
        raise ColumnValueError(f"bad {fmt} {name} value ({len(data)} bytes): {exc}") from exc


def decode_column(type_oid: int, kind: int, value: ColumnValue) -> object:
    """Decode one value of a TupleData given its kind byte (``TupleData.kinds[i]``).

    NULL gives ``None``; an unchanged TOAST value gives ``UNCHANGED_TOAST`` back.
    """
    if kind == KIND_BINARY and isinstance(value, bytes):
        return decode_binary(type_oid, value)
    if kind == KIND_TEXT and isinstance(value, bytes):
        return decode_text(type_oid, value)
    if kind == KIND_NULL:
        return None
    if kind == KIND_UNCHANGED_TOAST:
        return UNCHANGED_TOAST
    raise ColumnValueError(f"column kind {kind!r} does not match value {type(value).__name__}")


def decode_tuple(relation: Relation, row: TupleData) -> dict[str, object]:
    """Decode a whole row into ``{column name: value}`` using the Relation's types."""
    columns = relation.columns
    if len(columns) != len(row.values):
        raise ColumnValueError(
            f"row has {len(row.values)} values but relation {relation.namespace}."
            f"{relation.name} has {len(columns)} columns"
        )
    return {
        column.name: decode_column(column.type_oid, kind, value)
        for column, kind, value in zip(columns, row.kinds, row.values, strict=True)
    }
