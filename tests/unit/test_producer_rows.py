"""enqueue_many()'s rows: the usual message's short way makes the row the general way
makes, and anything else still goes the general way."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from relay.producer import _rows

PAYLOADS = [{"order": 7}, [1, 2], "text", 3.5, None, True]
UNSET = {"headers": None, "content_type": None, "deliver_at": None, "delay": None}


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
@pytest.mark.parametrize("key", ["k", None])
def test_the_usual_message_makes_the_row_of_the_general_way(payload, key):
    usual = {"topic": "t", "key": key, "payload": payload}
    assert _rows([usual]) == _rows([{**usual, **UNSET}])  # the second goes the long way
    assert _rows([MappingProxyType(usual)]) == _rows([usual])


def test_a_keyless_usual_message_has_no_key():
    (row,) = _rows([{"topic": "t", "payload": 1}])
    assert (row.topic, row.key, row.payload, row.payload_bytes) == ("t", None, "1", None)


def test_bytes_go_the_general_way_and_keep_their_content_type():
    (row,) = _rows([{"topic": "t", "key": "k", "payload": b"\x01"}])
    assert (row.payload, row.payload_bytes, row.content_type) == (
        None,
        b"\x01",
        "application/octet-stream",
    )


@pytest.mark.parametrize(
    "message", [{"key": "k", "payload": 1}, {"topic": "t", "key": "k"}, {"topic": "t"}, {}]
)
def test_a_message_without_its_topic_or_payload_is_still_refused(message):
    with pytest.raises(ValueError, match="message 1 of enqueue_many must have a topic"):
        _rows([{"topic": "t", "payload": 1}, message])
