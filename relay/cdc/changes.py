"""Turn decoded pgoutput messages into outbox events and position marks.

Inserts into the captured table and logical messages with this outbox's prefix become
events, positioned at their transaction's commit LSN; each Commit adds a mark at its
end LSN. Everything else (other tables, updates and deletes, other prefixes) is ignored:
the publication and the prefix already select what matters.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from struct import Struct
from struct import error as StructError
from typing import Final

import orjson

from relay.cdc.envelope import decode_envelope
from relay.cdc.frames import Buffer, as_byte_view
from relay.cdc.mapping import ID_NAMESPACE, BoundMapping, MappingError, RowMapping
from relay.cdc.outgoing import Outgoing, Unmappable
from relay.cdc.pgoutput import (
    KIND_BINARY,
    KIND_NULL,
    Begin,
    Commit,
    Insert,
    Message,
    PgOutputMessage,
    Relation,
    TupleData,
    parse_pgoutput,
)
from relay.cdc.settings import CdcNames
from relay.cdc.values import (
    ColumnValueError,
    binary_decoder,
    binary_width,
    decode_column,
    json_bytes_decoder,
)

log = logging.getLogger(__name__)


_Decoder = Callable[[bytes], object]
_UINT16: Final = Struct("!H").unpack_from
_UINT32: Final = Struct("!I").unpack_from
_TAG_INSERT: Final = ord("I")
_TAG_NEW: Final = ord("N")


def _no_decoder(_data: bytes) -> object:
    raise ValueError("no binary decoder")  # decode_column raises the real error


def _decoder_of(name: str, oid: int, raw_json: frozenset[str]) -> _Decoder:
    decoder = json_bytes_decoder(oid) if name in raw_json else None
    return decoder or binary_decoder(oid) or _no_decoder


@dataclass(frozen=True)
class _CapturedRelation:
    mapping: BoundMapping
    # (index in the tuple, name, type oid, the type's binary decoder): resolved once per
    # relation, because the generic per-value dispatch was a large share of the decoding time.
    columns: tuple[tuple[int, str, int, _Decoder], ...]
    # For read_insert: per column of the table, its name, decoder and the size of its
    # binary values (0: it varies, the value's header says); an empty name skips the
    # column (a triple either way, so the loop unpacks it without indexing).
    plan: tuple[tuple[str, _Decoder, int], ...]

    @classmethod
    def of(
        cls, mapping: BoundMapping, columns: Iterable[tuple[int, str, int]],
        types: Sequence[int],
    ) -> _CapturedRelation:
        """``columns``: the wanted ones (index, name, type oid); ``types``: every
        column's type oid, in the table's order."""
        raw_json = mapping.json_as_bytes
        resolved = tuple(
            (i, name, oid, _decoder_of(name, oid, raw_json)) for i, name, oid in columns
        )
        wanted = {i: (name, decoder) for i, name, _oid, decoder in resolved}
        plan = tuple(
            (*wanted.get(i, ("", _no_decoder)), binary_width(oid)) for i, oid in enumerate(types)
        )
        return cls(mapping, resolved, plan)

    def decode(self, row: TupleData) -> dict[str, object]:
        kinds, raw = row.kinds, row.values
        decoded: dict[str, object] = {}
        for i, name, oid, decoder in self.columns:
            value = raw[i]
            if value is None:  # SQL NULL; several outbox columns are NULL in every event
                decoded[name] = None
                continue
            if kinds[i] == KIND_BINARY and isinstance(value, bytes):
                try:
                    decoded[name] = decoder(value)
                    continue
                except (StructError, ValueError, OverflowError):
                    pass  # decode_column below raises it with the column's type named
            decoded[name] = decode_column(oid, kinds[i], value)
        return decoded

    def read_insert(self, data: bytes) -> dict[str, object] | None:
        """The wanted columns of the Insert message ``data``, decoded straight from its
        bytes; None for anything but a well-formed row of binary values and NULLs that
        all decode, which the general path (``parse_pgoutput``, ``decode``) then handles
        and, where something is wrong, reports. The same work as the general path without
        its intermediate objects, in less time per change."""
        plan = self.plan
        if data[5] != _TAG_NEW or _UINT16(data, 6)[0] != len(plan):
            return None
        decoded: dict[str, object] = {}
        pos = 8
        size = _UINT32  # a local: global lookups cost in this loop
        try:
            for name, decode, width in plan:
                kind = data[pos]
                if kind == KIND_BINARY:
                    start = pos + 5
                    # A fixed-size type's length header is not read: the server writes
                    # the type's size there, and were it anything else, the values after
                    # would not line up and end where the message ends (checked below).
                    pos = start + (width or size(data, pos + 1)[0])
                    if name:
                        decoded[name] = decode(data[start:pos])
                elif kind == KIND_NULL:
                    pos += 1
                    if name:
                        decoded[name] = None
                else:
                    return None
        except (StructError, ValueError, OverflowError, IndexError):
            return None
        return decoded if pos == len(data) else None


class ChangeDecoder:
    """Feeds ``sink`` from the messages of one replication session."""

    def __init__(
        self,
        names: CdcNames,
        mapping: RowMapping,
        sink: Outgoing,
        *,
        on_delayed: Callable[[], None] = lambda: None,
    ) -> None:
        self._names = names
        self._mapping = mapping
        self._sink = sink
        self._on_delayed = on_delayed  # a delayed message was written: see relay.scheduler
        self._captured: dict[int, _CapturedRelation] = {}
        self._position = 0
        self._ordinal = 0
        self._committed_at: datetime | None = None  # of the transaction being read
        self.events = 0

    def feed(self, payload: Buffer) -> None:
        """Apply one pgoutput message as it came from the stream (an XLogData payload).

        An insert into the captured table, nearly every message of a busy stream, is
        read straight from its bytes; everything else is parsed in full first."""
        data = payload if isinstance(payload, bytes) else as_byte_view(payload).tobytes()
        captured = None
        if len(data) > 7 and data[0] == _TAG_INSERT:
            captured = self._captured.get(_UINT32(data, 1)[0])
        row = captured.read_insert(data) if captured is not None else None
        if captured is None or row is None:
            self.apply(parse_pgoutput(data))
            return
        self._ordinal += 1
        self._publish_row(captured, row, data)

    def apply(self, message: PgOutputMessage) -> None:
        if isinstance(message, Insert):
            self._insert(message)
        elif isinstance(message, Begin):
            self._position, self._ordinal = message.final_lsn, 0
            self._committed_at = message.commit_time
        elif isinstance(message, Commit):
            self._sink.add_mark(message.end_lsn, commit=True)
        elif isinstance(message, Message):
            self._message(message)
        elif isinstance(message, Relation):
            self._relation(message)

    def _relation(self, relation: Relation) -> None:
        table = self._mapping.table
        if (relation.namespace, relation.name) != (table.schema, table.name):
            self._captured.pop(relation.relation_id, None)
            return
        columns = [(column.name, column.type_oid) for column in relation.columns]
        bound = self._mapping.bind(columns)  # a MappingError here stops the stream: wrong table
        wanted = tuple(
            (index, name, oid) for index, (name, oid) in enumerate(columns)
            if name in bound.columns
        )
        self._captured[relation.relation_id] = _CapturedRelation.of(
            bound, wanted, [oid for _name, oid in columns]
        )

    def _insert(self, insert: Insert) -> None:
        captured = self._captured.get(insert.relation_id)
        if captured is None:
            return
        self._ordinal += 1
        try:
            row = captured.decode(insert.new)
        except ColumnValueError as exc:
            self._park_row(captured, insert.new, exc)
            return
        self._publish_row(captured, row, insert.new)

    def _publish_row(
        self, captured: _CapturedRelation, row: dict[str, object], raw: TupleData | bytes
    ) -> None:
        """Queue the message of ``row``; ``raw`` is the row as received (or the whole
        Insert message), for parking it when it maps to no message."""
        try:
            message = captured.mapping.to_message(row, self._position)
        except MappingError as exc:
            self._park_row(captured, raw if isinstance(raw, TupleData) else insert_of(raw).new,
                           exc)
            return
        if message is not None:
            message.committed_at = self._committed_at
            if self._names.debezium and message.timestamp is None:
                # Debezium stamps a record with the time it read the change; the commit
                # time is that moment's deterministic twin, the same on every redelivery.
                message.timestamp = self._committed_at
            self.events += 1
            self._sink.add(message)
        elif captured.mapping.is_delayed(row):
            self._on_delayed()

    def _park_row(self, captured: _CapturedRelation, row: TupleData, exc: Exception) -> None:
        raw = orjson.dumps(_row_for_parking(captured, row), default=str)
        self._unmappable(raw, str(exc))

    def _message(self, message: Message) -> None:
        if message.prefix != self._names.message_prefix:
            return
        if not message.transactional:  # outside any transaction: its own position
            self._position, self._ordinal = message.lsn, 0
        self._ordinal += 1
        try:
            event = decode_envelope(message.content, self._position)
            if message.transactional:
                event.committed_at = self._committed_at
            self._sink.add(event)
            self.events += 1
        except MappingError as exc:
            self._unmappable(message.content, str(exc))
        if not message.transactional:
            self._sink.add_mark(message.lsn + 1, commit=True)

    def _unmappable(self, raw: bytes, error: str) -> None:
        ident = uuid.uuid5(ID_NAMESPACE, f"{self._names.own_name}:{self._position}:{self._ordinal}")
        log.error("event %s at WAL position %X cannot be published (%s); parking it",
                  ident, self._position, error)
        self._sink.add(Unmappable(ident, raw, error, self._position))


def insert_of(data: bytes) -> Insert:
    """The Insert message ``data``, parsed in full."""
    insert = parse_pgoutput(data)
    assert isinstance(insert, Insert)  # the caller saw its tag
    return insert


def _row_for_parking(captured: _CapturedRelation, row: TupleData) -> dict[str, object]:
    """The raw row as text, for a person to look at in the parked message."""
    out: dict[str, object] = {}
    for index, name, _oid, _decoder in captured.columns:
        value = row.values[index]
        out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else None
    return out
