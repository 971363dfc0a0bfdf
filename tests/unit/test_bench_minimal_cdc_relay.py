"""The minimal CDC relay's reading of pgoutput messages, and how the suite starts it."""

from __future__ import annotations

import struct
from pathlib import Path

from benchmarks.ceiling_report import LIGHT_RELAYS
from benchmarks.minimal_cdc_relay import WANTED, insert_values, relation_columns
from benchmarks.processes import MINIMAL_VARIANTS, minimal_argv

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


def test_the_suite_starts_each_cdc_variant_with_its_settings_and_way_to_wait() -> None:
    for kind, reports in (("minimal-cdc-relay-kafka", "flush"),
                          ("minimal-cdc-relay-kafka-thread", "thread")):  # fmt: skip
        argv = minimal_argv(kind, "dbname=x", ["--kafka-bootstrap", "h:1"], Path("/tmp/p"))
        assert argv[1:3] == ["-m", "benchmarks.minimal_cdc_relay"]
        assert argv[argv.index("--kafka-settings") + 1] == "relay"
        assert argv[argv.index("--reports") + 1] == reports


def test_every_minimal_relay_has_a_label_in_the_light_table() -> None:
    assert set(MINIMAL_VARIANTS) <= set(LIGHT_RELAYS)
