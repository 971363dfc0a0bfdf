"""Decode the messages of PostgreSQL's built-in ``pgoutput`` logical decoding plugin.

Each ``XLogData`` frame of the replication stream (``relay.cdc.frames``, whose API is
re-exported here) carries one message: ``parse_pgoutput`` turns it into one of the
dataclasses below. Pure functions over bytes.

Only ``proto_version '1'`` is understood, with the ``binary`` (PostgreSQL 14+) and
``messages`` options. The relay never asks for ``streaming`` (version 2) or
``two_phase`` (version 3), so their messages are rejected with an error that says so:
in version 2 a streamed change carries an extra xid that a version 1 reader would
silently misread as the relation id.

The parser copies a message into ``bytes`` once and slices the values out of it (one
more copy each), which costs less than slicing a ``memoryview`` and copying the slices
out. Every malformed input (truncated, trailing bytes, unknown tags) raises
``PgOutputProtocolError``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from struct import Struct
from struct import error as StructError
from typing import Final, Literal, TypeAlias

from relay.cdc.frames import (
    PG_EPOCH,
    Buffer,
    PgOutputProtocolError,
    PrimaryKeepalive,
    XLogData,
    as_byte_view,
    describe_tag,
    encode_standby_status,
    lsn_to_str,
    parse_copy_data,
    pg_now,
    pg_timestamp_to_datetime,
    str_to_lsn,
)

__all__ = [
    "KIND_BINARY",
    "KIND_NULL",
    "KIND_TEXT",
    "KIND_UNCHANGED_TOAST",
    "PG_EPOCH",
    "UNCHANGED_TOAST",
    "Begin",
    "ColumnValue",
    "Commit",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgOutputMessage",
    "PgOutputProtocolError",
    "PrimaryKeepalive",
    "Relation",
    "RelationColumn",
    "ToastMarker",
    "Truncate",
    "TupleData",
    "Type",
    "Update",
    "XLogData",
    "encode_standby_status",
    "lsn_to_str",
    "parse_copy_data",
    "parse_pgoutput",
    "pg_now",
    "pg_timestamp_to_datetime",
    "str_to_lsn",
]


class ToastMarker(enum.Enum):
    """Stands for a TOASTed value that did not change, so the server did not send it."""

    UNCHANGED = "u"


UNCHANGED_TOAST: Final = ToastMarker.UNCHANGED

ColumnValue: TypeAlias = bytes | Literal[ToastMarker.UNCHANGED] | None

# The kind byte before each column of a TupleData.
KIND_NULL: Final = ord("n")
KIND_UNCHANGED_TOAST: Final = ord("u")
KIND_TEXT: Final = ord("t")
KIND_BINARY: Final = ord("b")
_KINDS_WITH_DATA: Final = frozenset({KIND_TEXT, KIND_BINARY})


# Not frozen: one is made per change, and a frozen dataclass's __init__ costs about a
# µs more (see relay.model.OutboxMessage). Treat it as read-only.
@dataclass(slots=True)
class TupleData:
    """One row: ``values[i]`` is column ``i`` of the Relation, raw.

    ``kinds[i]`` tells how to read it: ``KIND_BINARY`` (the type's send format, used for
    every type that has one when the ``binary`` option is on), ``KIND_TEXT`` (its output
    format), ``KIND_NULL`` or ``KIND_UNCHANGED_TOAST``.
    """

    values: tuple[ColumnValue, ...]
    kinds: bytes


@dataclass(frozen=True, slots=True)
class Begin:
    """Starts a transaction; ``final_lsn`` is the LSN of its commit record."""

    final_lsn: int
    commit_ts: int  # µs since PG_EPOCH
    xid: int

    @property
    def commit_time(self) -> datetime:
        return pg_timestamp_to_datetime(self.commit_ts)


@dataclass(frozen=True, slots=True)
class Commit:
    """Ends a transaction. Once all of it is acknowledged, ``end_lsn`` is the position to
    confirm as flushed: the slot restarts after it."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int  # µs since PG_EPOCH

    @property
    def commit_time(self) -> datetime:
        return pg_timestamp_to_datetime(self.commit_ts)


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replayed from another node (set by a replication origin)."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Part of the replica identity (the primary key by default)."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape, sent before its first change in each session and after DDL."""

    relation_id: int
    namespace: str  # empty for pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """Names a non-built-in column type before a Relation that uses it."""

    type_oid: int
    namespace: str
    name: str


# Not frozen: one is made per change, and a frozen dataclass's __init__ costs about a
# µs more (see relay.model.OutboxMessage). Treat it as read-only.
@dataclass(slots=True)
class Insert:
    """A new row of the table ``relation_id`` (announced by a Relation message before)."""

    relation_id: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """``old`` is sent only when the key changed ('K') or with REPLICA IDENTITY FULL ('O')."""

    relation_id: int
    old_kind: str | None
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    """``old`` holds the key columns ('K', others NULL) or the whole row ('O')."""

    relation_id: int
    old_kind: str
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    """Tables emptied by one TRUNCATE statement."""

    relation_ids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A ``pg_logical_emit_message``; non-transactional ones arrive outside Begin/Commit."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgOutputMessage: TypeAlias = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message
)

_BEGIN: Final = Struct("!QqI")
_COMMIT: Final = Struct("!BQQq")
_ORIGIN_LSN: Final = Struct("!Q")
_RELATION_ID: Final = Struct("!I")
_RELATION_ID_AND_TAG: Final = Struct("!IB")
_COLUMN_TYPE: Final = Struct("!Ii")
_MESSAGE_HEAD: Final = Struct("!BQ")
_TRUNCATE_HEAD: Final = Struct("!IB")
_UINT16: Final = Struct("!H")
_UINT32: Final = Struct("!I")
_TAG_NEW: Final = ord("N")
_TAG_KEY: Final = ord("K")
_TAG_OLD: Final = ord("O")

_Parsed: TypeAlias = tuple[PgOutputMessage, int]  # the message and the offset after it


def parse_pgoutput(payload: Buffer) -> PgOutputMessage:
    """Decode one pgoutput message (the payload of an ``XLogData``)."""
    # One copy of the message: slicing bytes is cheaper than slicing a memoryview and
    # copying each slice out, and every column value is copied out anyway.
    data = payload if isinstance(payload, bytes) else as_byte_view(payload).tobytes()
    if not data:
        raise PgOutputProtocolError("empty pgoutput message")
    tag = data[0]
    parser = _PARSERS.get(tag)
    if parser is None:
        raise PgOutputProtocolError(_unknown_message(tag))
    try:
        message, end = parser(data)
    except (StructError, IndexError, ValueError) as exc:
        # ValueError covers a missing string terminator and invalid UTF-8.
        raise PgOutputProtocolError(
            f"malformed pgoutput {describe_tag(tag)} message ({len(data)} bytes): {exc}"
        ) from exc
    if end != len(data):
        problem = "is truncated" if end > len(data) else f"has {len(data) - end} trailing bytes"
        raise PgOutputProtocolError(
            f"pgoutput {describe_tag(tag)} message of {len(data)} bytes {problem}"
        )
    return message


def _parse_begin(data: bytes) -> _Parsed:
    final_lsn, commit_ts, xid = _BEGIN.unpack_from(data, 1)
    return Begin(final_lsn, commit_ts, xid), 1 + _BEGIN.size


def _parse_commit(data: bytes) -> _Parsed:
    flags, commit_lsn, end_lsn, commit_ts = _COMMIT.unpack_from(data, 1)
    return Commit(flags, commit_lsn, end_lsn, commit_ts), 1 + _COMMIT.size


def _parse_origin(data: bytes) -> _Parsed:
    (commit_lsn,) = _ORIGIN_LSN.unpack_from(data, 1)
    name, end = _read_cstring(data, 9)
    return Origin(commit_lsn, name), end


def _parse_relation(data: bytes) -> _Parsed:
    (relation_id,) = _RELATION_ID.unpack_from(data, 1)
    namespace, pos = _read_cstring(data, 5)
    name, pos = _read_cstring(data, pos)
    identity, count = data[pos], _UINT16.unpack_from(data, pos + 1)[0]
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        column_name, pos = _read_cstring(data, pos + 1)
        type_oid, type_modifier = _COLUMN_TYPE.unpack_from(data, pos)
        pos += _COLUMN_TYPE.size
        columns.append(RelationColumn(flags, column_name, type_oid, type_modifier))
    return Relation(relation_id, namespace, name, chr(identity), tuple(columns)), pos


def _parse_type(data: bytes) -> _Parsed:
    (type_oid,) = _UINT32.unpack_from(data, 1)
    namespace, pos = _read_cstring(data, 5)
    name, pos = _read_cstring(data, pos)
    return Type(type_oid, namespace, name), pos


def _parse_insert(data: bytes) -> _Parsed:
    relation_id, tag = _RELATION_ID_AND_TAG.unpack_from(data, 1)
    _expect_tag(tag, (_TAG_NEW,), "Insert")
    new, end = _read_tuple(data, 6)
    return Insert(relation_id, new), end


def _parse_update(data: bytes) -> _Parsed:
    relation_id, tag = _RELATION_ID_AND_TAG.unpack_from(data, 1)
    _expect_tag(tag, (_TAG_KEY, _TAG_OLD, _TAG_NEW), "Update")
    old_kind: str | None = None
    old: TupleData | None = None
    pos = 6
    if tag != _TAG_NEW:
        old_kind = chr(tag)
        old, pos = _read_tuple(data, pos)
        _expect_tag(data[pos], (_TAG_NEW,), "Update")
        pos += 1
    new, end = _read_tuple(data, pos)
    return Update(relation_id, old_kind, old, new), end


def _parse_delete(data: bytes) -> _Parsed:
    relation_id, tag = _RELATION_ID_AND_TAG.unpack_from(data, 1)
    _expect_tag(tag, (_TAG_KEY, _TAG_OLD), "Delete")
    old, end = _read_tuple(data, 6)
    return Delete(relation_id, chr(tag), old), end


def _parse_truncate(data: bytes) -> _Parsed:
    count, options = _TRUNCATE_HEAD.unpack_from(data, 1)
    start = 1 + _TRUNCATE_HEAD.size
    if start + 4 * count > len(data):  # before building a Struct for a garbage count
        raise ValueError(f"{count} relation ids do not fit")
    relation_ids = Struct(f"!{count}I").unpack_from(data, start)
    return Truncate(relation_ids, bool(options & 1), bool(options & 2)), start + 4 * count


def _parse_message(data: bytes) -> _Parsed:
    flags, lsn = _MESSAGE_HEAD.unpack_from(data, 1)
    prefix, pos = _read_cstring(data, 1 + _MESSAGE_HEAD.size)
    (size,) = _UINT32.unpack_from(data, pos)
    start = pos + 4
    end = start + size
    return Message(bool(flags & 1), lsn, prefix, data[start:end]), end


def _read_tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    """Read a TupleData at ``pos``; the hot loop of the decoder."""
    (count,) = _UINT16.unpack_from(data, pos)
    pos += 2
    values: list[ColumnValue] = []
    append = values.append
    read_size = _UINT32.unpack_from
    with_data = _KINDS_WITH_DATA  # a local: global lookups cost in this loop
    kinds = bytearray(count)
    for index in range(count):
        kind = kinds[index] = data[pos]
        if kind in with_data:
            start = pos + 5
            pos = start + read_size(data, pos + 1)[0]
            append(data[start:pos])
        elif kind == KIND_NULL:
            append(None)
            pos += 1
        elif kind == KIND_UNCHANGED_TOAST:
            append(UNCHANGED_TOAST)
            pos += 1
        else:
            raise PgOutputProtocolError(
                f"unknown column kind {describe_tag(kind)} in column {index} of a TupleData"
            )
    return TupleData(tuple(values), bytes(kinds)), pos


def _read_cstring(data: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``pos``; return it and the offset after it."""
    end = data.find(0, pos)
    if end < 0:
        raise ValueError(f"string at offset {pos} has no terminating NUL")
    return data[pos:end].decode(), end + 1


def _expect_tag(tag: int, allowed: tuple[int, ...], message: str) -> None:
    if tag not in allowed:
        wanted = " or ".join(repr(chr(t)) for t in allowed)
        raise PgOutputProtocolError(
            f"pgoutput {message} message has tuple tag {describe_tag(tag)}, expected {wanted}"
        )


# Messages of later protocol versions; named so the error says what was asked for.
_LATER_VERSION_MESSAGES: Final = {
    ord("S"): ("Stream Start", "streaming"),
    ord("E"): ("Stream Stop", "streaming"),
    ord("c"): ("Stream Commit", "streaming"),
    ord("A"): ("Stream Abort", "streaming"),
    ord("b"): ("Begin Prepare", "two_phase"),
    ord("P"): ("Prepare", "two_phase"),
    ord("K"): ("Commit Prepared", "two_phase"),
    ord("r"): ("Rollback Prepared", "two_phase"),
    ord("p"): ("Stream Prepare", "two_phase"),
}


def _unknown_message(tag: int) -> str:
    later = _LATER_VERSION_MESSAGES.get(tag)
    if later is not None:
        name, option = later
        return (
            f"pgoutput {name} message {describe_tag(tag)} is not supported: it is only sent "
            f"with the '{option}' option, which this decoder (proto_version 1) does not request"
        )
    return f"unknown pgoutput message type {describe_tag(tag)}"


_PARSERS: Final[dict[int, Callable[[bytes], _Parsed]]] = {
    ord("B"): _parse_begin,
    ord("C"): _parse_commit,
    ord("O"): _parse_origin,
    ord("R"): _parse_relation,
    ord("Y"): _parse_type,
    ord("I"): _parse_insert,
    ord("U"): _parse_update,
    ord("D"): _parse_delete,
    ord("T"): _parse_truncate,
    ord("M"): _parse_message,
}
