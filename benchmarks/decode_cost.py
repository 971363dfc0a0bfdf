"""What CDC's Python costs per change, from a replication frame to an OutboxMessage.

    python -m benchmarks.decode_cost [--messages 50000] [--rounds 5] [--relay-source DIR]

No database and no broker: one binary pgoutput Insert of a row of the relay's own
outbox table (``<schema>.messages`` after migration 0006, a ~1 KB JSON payload) is
decoded over and over the way the CDC session does it: ``wal_data_payload`` (or
``parse_copy_data`` in a tree from before it), then ``ChangeDecoder.feed`` (or
``parse_pgoutput`` and ``ChangeDecoder.apply`` before that). Prints the best round's µs
per message.

Wall time on a shared 2-core machine wanders; instruction counts do not. For an A/B
that holds, count instructions with callgrind at two sizes and take the difference:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m benchmarks.decode_cost --messages 1 --rounds 1
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m benchmarks.decode_cost --messages 10001 --rounds 1

(the "Collected" totals, difference / 10,000 = instructions per message).
"""

from __future__ import annotations

import argparse
import struct
import sys
import timeit
from typing import Any

from benchmarks.payloads import body_pool, event_key, event_text

# (name, type oid) of <schema>.messages, in table order.
OUTBOX_COLUMNS = (
    ("seq", 20), ("id", 2950), ("topic", 25), ("key", 25), ("payload", 114),
    ("payload_bytes", 17), ("content_type", 25), ("headers", 3802), ("created_at", 1184),
    ("available_at", 1184), ("attempts", 23), ("last_error", 25), ("sent_at", 1184),
    ("parked_at", 1184), ("bucket", 21),
)
RELATION_ID = 16384


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--relay-source", help="import relay/ from here")
    return parser.parse_args()


def _binary(value: bytes) -> bytes:
    return b"b" + struct.pack("!I", len(value)) + value


def insert_frame() -> memoryview:
    """An XLogData frame holding one Insert into the outbox table, values in binary."""
    pool = body_pool()
    micros = struct.pack("!q", 849_000_000_000_000)  # µs since 2000-01-01
    values = {
        "seq": _binary(struct.pack("!q", 7)), "id": _binary(bytes(range(16))),
        "topic": _binary(b"orders"), "key": _binary(event_key(pool, 7).encode()),
        "payload": _binary(event_text(pool, 7, 1_764_700_000.0).encode()),
        "content_type": _binary(b"application/json"), "headers": _binary(b"\x01{}"),
        "created_at": _binary(micros), "available_at": _binary(micros),
        "attempts": _binary(struct.pack("!i", 0)), "bucket": _binary(struct.pack("!h", 9)),
    }
    columns = [values.get(name, b"n") for name, _ in OUTBOX_COLUMNS]
    message = (b"I" + struct.pack("!IcH", RELATION_ID, b"N", len(columns))
               + b"".join(columns))
    return memoryview(b"w" + struct.pack("!QQq", 1, 2, 3) + message)


def decoder() -> Any:
    """A ChangeDecoder for the outbox table, told its Relation (events queue up in it)."""
    from relay.cdc.changes import ChangeDecoder
    from relay.cdc.mapping import OutboxTableMapping
    from relay.cdc.outgoing import Outgoing
    from relay.cdc.pgoutput import Relation, RelationColumn
    from relay.cdc.settings import CdcSettings, TableName

    table = TableName("outbox", "messages")
    names = CdcSettings(table=str(table)).resolve("outbox")
    change_decoder = ChangeDecoder(names, OutboxTableMapping(table), Outgoing())
    columns = tuple(RelationColumn(0, name, oid, -1) for name, oid in OUTBOX_COLUMNS)
    change_decoder.apply(Relation(RELATION_ID, "outbox", "messages", "d", columns))
    return change_decoder


def time_round(frame: memoryview, messages: int) -> float:
    """Seconds to decode ``frame`` ``messages`` times with a fresh decoder."""
    from relay.cdc import frames
    from relay.cdc.frames import parse_copy_data
    from relay.cdc.pgoutput import parse_pgoutput

    change_decoder = decoder()
    feed = getattr(change_decoder, "feed", None)  # what the session calls, where it exists
    wal_data_payload = getattr(frames, "wal_data_payload", None)  # likewise

    def one() -> None:
        if wal_data_payload is not None:
            payload = wal_data_payload(frame)[1]
        else:
            payload = parse_copy_data(frame).payload
        if feed is not None:
            feed(payload)
        else:
            change_decoder.apply(parse_pgoutput(payload))

    seconds = timeit.timeit(one, number=messages)
    if change_decoder.events != messages:
        sys.exit(f"decoded {change_decoder.events} events, expected {messages}")
    return seconds


def main() -> None:
    args = parse_args()
    if args.relay_source:
        sys.path.insert(0, args.relay_source)
    import relay

    frame = insert_frame()
    best = min(time_round(frame, args.messages) for _ in range(args.rounds))
    print(f"{args.messages:,} changes, best of {args.rounds}: "
          f"{best / args.messages * 1e6:.2f} µs per message (relay from {relay.__file__})")


if __name__ == "__main__":
    main()
