"""Setting messages aside: the rows they become, and the acknowledgement that follows."""

from uuid import uuid4

from relay.cdc.aside import renumbered, set_aside_params
from relay.model import OutboxMessage, permanent, retryable
from relay.outbox_rows import FailurePolicy, plan_acknowledgement


def message(payload, content_type="application/json", key="k", headers=None):
    return OutboxMessage(id=uuid4(), topic="t", key=key, payload=payload,
                         headers=headers or {}, content_type=content_type)  # fmt: skip


def test_json_stays_text_and_anything_else_travels_as_bytes():
    rows = [
        message(b'{"a": 1}'),
        message(b"{not json", headers={"h": "v"}),  # enqueue_binary may say it is JSON
        message(b"\x00\xff", "application/octet-stream"),
        message(None),
    ]
    params = set_aside_params(rows)
    assert params["payloads"] == ['{"a": 1}', None, None, None]
    assert params["payload_bytes"] == [None, b"{not json", b"\x00\xff", None]
    assert params["headers"][1] == '{"h":"v"}'


def test_a_message_twice_in_a_run_is_set_aside_once():
    twice = message(b"1")
    assert set_aside_params([twice, message(b"2"), twice])["ids"][::2] == [twice.id]


def test_positions_become_the_seqs_the_rows_got_and_rows_not_set_aside_are_left_out():
    rows = [message(b"1", key="a"), message(b"2", key="b"), message(b"3", key=None)]
    for position, row in enumerate(rows):  # as the publisher plans: indexes into the run
        row.position = position
    policy = FailurePolicy(retry_base=0.5, retry_cap=1)
    nacks = [retryable("nack", answered=True), retryable("x", answered=True)]
    ack = plan_acknowledgement(rows, [permanent("no"), *nacks], policy)
    out = renumbered(ack, [70, None, 72])  # b's row was already there: dealt with before
    assert out.dead_seqs == [70] and out.hold_keys == ["a"] and out.hold_seqs == [70]
    assert out.failed_seqs == [72] and out.failed_errors == ["x"]
