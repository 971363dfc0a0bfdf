"""The CopyData frames of PostgreSQL's streaming replication protocol, and LSNs.

During ``START_REPLICATION`` the server sends ``XLogData`` frames (each carrying one
logical decoding message, decoded by ``relay.cdc.pgoutput``) and ``PrimaryKeepalive``
frames; the client answers with standby status updates. Pure functions over bytes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from struct import Struct
from struct import error as StructError
from typing import Final, TypeAlias

from relay.errors import PermanentError

__all__ = [
    "PG_EPOCH",
    "PgOutputProtocolError",
    "PrimaryKeepalive",
    "XLogData",
    "encode_standby_status",
    "lsn_to_str",
    "parse_copy_data",
    "pg_now",
    "pg_timestamp_to_datetime",
    "str_to_lsn",
    "wal_data_payload",
]


class PgOutputProtocolError(PermanentError):
    """A replication frame or pgoutput message could not be decoded.

    Permanent: the slot would send the same bytes again after a reconnect.
    """


Buffer: TypeAlias = bytes | bytearray | memoryview

# ---------------------------------------------------------------------------
# Time and LSN

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Origin of PostgreSQL timestamps, which count microseconds from it."""

_PG_EPOCH_UNIX_US: Final = 946_684_800_000_000


def pg_timestamp_to_datetime(microseconds: int) -> datetime:
    """A PostgreSQL timestamp (µs since 2000-01-01 UTC) as an aware ``datetime``."""
    return PG_EPOCH + timedelta(microseconds=microseconds)


def pg_now() -> int:
    """The current time as a PostgreSQL timestamp, for standby status updates."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US


_LSN_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def lsn_to_str(lsn: int) -> str:
    """Format an LSN the way PostgreSQL prints ``pg_lsn``: ``16/B374D848``."""
    if not 0 <= lsn <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFF_FFFF:X}"


def str_to_lsn(text: str) -> int:
    """Parse a ``pg_lsn`` text such as ``16/B374D848`` into an integer."""
    match = _LSN_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"not an LSN: {text!r} (expected two hex numbers like '16/B374D848')")
    return int(match[1], 16) << 32 | int(match[2], 16)


# ---------------------------------------------------------------------------
# CopyData frames of the replication stream

_XLOGDATA_HEADER: Final = Struct("!QQq")  # WAL start, WAL end, server clock
_KEEPALIVE: Final = Struct("!QqB")  # WAL end, server clock, reply requested
_STANDBY_STATUS: Final = Struct("!cQQQqB")
_TAG_XLOGDATA: Final = ord("w")
_TAG_KEEPALIVE: Final = ord("k")
_WAL_END: Final = Struct("!Q")  # at offset 9 of an XLogData frame
_XLOGDATA_PAYLOAD_AT: Final = 1 + _XLOGDATA_HEADER.size


# Not frozen: one is made per change, and a frozen dataclass's __init__ costs about a
# µs more (see relay.model.OutboxMessage). Treat it as read-only.
@dataclass(slots=True)
class XLogData:
    """A frame of WAL data; ``payload`` is one pgoutput message (a view, not a copy).

    ``wal_start`` and ``wal_end`` are 0 for messages written outside a WAL record
    (Relation, Type, and a Begin followed by Origin): take positions from Commit.
    """

    wal_start: int
    wal_end: int
    server_clock: int  # µs since PG_EPOCH
    payload: memoryview


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """The server's heartbeat; ``reply_requested`` asks for a standby status update now."""

    wal_end: int
    server_clock: int  # µs since PG_EPOCH
    reply_requested: bool


def parse_copy_data(data: Buffer) -> XLogData | PrimaryKeepalive:
    """Decode one CopyData frame received during ``START_REPLICATION``."""
    view = as_byte_view(data)
    if not view:
        raise PgOutputProtocolError("empty replication frame")
    tag = view[0]
    try:
        if tag == _TAG_XLOGDATA:
            start, end, clock = _XLOGDATA_HEADER.unpack_from(view, 1)
            return XLogData(start, end, clock, view[1 + _XLOGDATA_HEADER.size :])
        if tag == _TAG_KEEPALIVE:
            end, clock, reply = _KEEPALIVE.unpack_from(view, 1)
            if len(view) != 1 + _KEEPALIVE.size:
                raise PgOutputProtocolError(
                    f"primary keepalive frame has {len(view)} bytes, expected 18"
                )
            return PrimaryKeepalive(end, clock, reply != 0)
    except StructError as exc:
        raise PgOutputProtocolError(
            f"truncated replication frame {describe_tag(tag)} ({len(view)} bytes)"
        ) from exc
    raise PgOutputProtocolError(
        f"unknown replication frame type {describe_tag(tag)}; expected 'w' or 'k'"
    )


def wal_data_payload(frame: memoryview) -> tuple[int, bytes] | None:
    """(WAL end, pgoutput message) of an XLogData frame; None for any other frame, which
    ``parse_copy_data`` then reads (and, where it is malformed, reports).

    Nearly every frame of a busy stream is one, so it is read in place: building the
    ``XLogData`` record and a view of its payload cost a µs per change."""
    if len(frame) <= _XLOGDATA_PAYLOAD_AT or frame[0] != _TAG_XLOGDATA:
        return None
    return _WAL_END.unpack_from(frame, 9)[0], frame[_XLOGDATA_PAYLOAD_AT:].tobytes()


def encode_standby_status(
    written_lsn: int,
    flushed_lsn: int,
    applied_lsn: int,
    *,
    reply: bool = False,
    clock: int | None = None,
) -> bytes:
    """Build a Standby status update ('r') to send with ``put_copy_data``.

    ``flushed_lsn`` is what the server may forget: the slot's confirmed position.
    ``clock`` (µs since PG_EPOCH) defaults to now; ``reply`` asks for a keepalive back.
    """
    try:
        return _STANDBY_STATUS.pack(
            b"r",
            written_lsn,
            flushed_lsn,
            applied_lsn,
            pg_now() if clock is None else clock,
            1 if reply else 0,
        )
    except StructError as exc:
        raise ValueError(f"standby status out of range: {exc}") from exc


# ---------------------------------------------------------------------------
# Shared with relay.cdc.pgoutput


def as_byte_view(data: Buffer) -> memoryview:
    """``data`` as a flat view of unsigned bytes, without copying it."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def describe_tag(tag: int) -> str:
    """A message tag for error text: ``'w' (0x77)``, or hex alone when unprintable."""
    return f"{chr(tag)!r} (0x{tag:02x})" if 0x20 <= tag < 0x7F else f"0x{tag:02x}"
