"""The minimal CDC relay's reading of pgoutput messages, and how the suite starts it."""

from __future__ import annotations

import struct
from pathlib import Path

from benchmarks.minimal_cdc_relay import WANTED, insert_values, relation_columns
from benchmarks.processes import minimal_argv

COLUMNS = ("seq", "id", "topic", "key", "payload", "headers")


def relation(oid: int) -> bytes:
    body = b"R" + struct.pack(">I", oid) + b"outbox\0messages\0" + b"d"
    body += struct.pack(">H", len(COLUMNS))
    for n, name in enumerate(COLUMNS):
        body += bytes([n == 0]) + name.encode() + b"\0" + struct.pack(">Ii", 25, -1)
    return body


def insert(oid: int, values: list[bytes | None]) -> bytes:
    body = b"I" + struct.pack(">I", oid) + b"N" + struct.pack(">H", len(values))
    for value in values:
        body += b"n" if value is None else b"t" + struct.pack(">I", len(value)) + value
    return body


def test_an_insert_gives_the_wanted_columns_in_the_relation_s_order() -> None:
    oid, indexes = relation_columns(relation(16385))
    values = insert_values(insert(16385, [b"7", b"id-1", b"orders", None, b'{"n": 1}', b"{}"]))
    assert oid == 16385
    assert dict(zip(WANTED, (values[i] for i in indexes), strict=True)) == {
        "id": "id-1", "topic": "orders", "key": None, "payload": '{"n": 1}',
    }  # fmt: skip


def test_the_suite_starts_the_cdc_variant_without_the_polling_relay_s_options() -> None:
    argv = minimal_argv("minimal-cdc-relay-kafka", "dbname=x", ["--kafka-bootstrap", "h:1"],
                        Path("/tmp/p"))  # fmt: skip
    assert argv[1:3] == ["-m", "benchmarks.minimal_cdc_relay"]
    assert "--reports" not in argv and argv[argv.index("--kafka-settings") + 1] == "relay"
