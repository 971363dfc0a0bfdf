"""The relay's own basic.publish frames are the bytes pika's Channel.basic_publish sends."""

from __future__ import annotations

import uuid
from typing import Any

import pika
import pytest
from pika import connection, spec

from connectors.amqp_frames import MAX_CACHED_ROUTES, FieldTooLong, PublishEncoder

FRAME_MAX = 131_072


class _CapturingConnection(connection.Connection):  # type: ignore[misc]
    """pika's own Connection with no I/O: what ``_send_message`` emits is kept."""

    def __init__(self, frame_max: int) -> None:
        super().__init__(pika.ConnectionParameters(frame_max=frame_max),
                         internal_connection_workflow=False)
        self._body_max_length = self._get_body_frame_max_length()  # as after Tune
        self.sent: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        self.sent.append(data)

    def _adapter_add_callback_threadsafe(self, callback: Any) -> None:
        raise NotImplementedError

    def _adapter_call_later(self, delay: float, callback: Any) -> None:
        raise NotImplementedError

    def _adapter_remove_timeout(self, timeout_id: Any) -> None:
        raise NotImplementedError

    def _adapter_connect_stream(self) -> None:
        raise NotImplementedError

    def _adapter_disconnect_stream(self) -> None:
        raise NotImplementedError


def pika_frames(
    channel: int, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties,
    frame_max: int,
) -> list[bytes]:
    """The frames pika's basic_publish sends: its own Connection._send_message."""
    capture = _CapturingConnection(frame_max)
    publish = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
    capture._send_message(channel, publish, (props, body))
    return capture.sent


CASES = [
    # routing key, body, content type, headers, timestamp
    ("orders.created", b'{"n":1}', "application/json", {}, 1_714_564_800),
    ("orders.created", b"", "application/json", {"key": "order-1"}, None),
    ("zählung.ä", bytes(range(256)), "application/octet-stream",
     {"trace": "t1", "key": "ключ", "ü": ""}, 0),
    ("a" * 255, b"x" * (FRAME_MAX - 8), "text/plain", {"k" * 255: "v" * 1000}, 2**40),
    ("big", b"y" * (FRAME_MAX - 7), "application/json", {}, 1),
    ("bigger", bytes(400_000), "application/json", {"key": "k"}, 1_714_564_800),
]


@pytest.mark.parametrize(("routing_key", "body", "content_type", "headers", "timestamp"), CASES)
@pytest.mark.parametrize(("channel", "frame_max"), [(1, FRAME_MAX), (7, 4096)])
def test_frames_equal_what_pika_sends(
    routing_key: str, body: bytes, content_type: str, headers: dict[str, str],
    timestamp: int | None, channel: int, frame_max: int,
) -> None:
    message_id = str(uuid.uuid4())
    props = pika.BasicProperties(
        message_id=message_id, delivery_mode=2, content_type=content_type,
        headers=headers, timestamp=timestamp,
    )
    encoder = PublishEncoder(channel, "outbox-events", frame_max)
    for _ in range(2):  # the second time the method frame comes from the cache
        ours = encoder.frames(routing_key, body, message_id=message_id,
                              content_type=content_type, headers=headers, timestamp=timestamp)
        assert ours == pika_frames(channel, "outbox-events", routing_key, body, props, frame_max)


@pytest.mark.parametrize(
    ("field", "words"),
    [("routing_key", "topic"), ("content_type", "content type"), ("header", "header name")],
)
def test_fields_longer_than_a_short_string_are_refused(field: str, words: str) -> None:
    long_text = "é" * 128  # 256 bytes in UTF-8, though only 128 characters
    args = {"routing_key": "t", "content_type": "application/json", "headers": {}}
    if field == "header":
        args["headers"] = {long_text: "v"}
    else:
        args[field] = long_text
    encoder = PublishEncoder(1, "outbox", FRAME_MAX)
    with pytest.raises(FieldTooLong, match=f"{words}.*256 bytes.*255"):
        encoder.frames(args["routing_key"], b"{}", message_id="m",  # type: ignore[arg-type]
                       content_type=args["content_type"], headers=args["headers"],
                       timestamp=None)


def test_headers_that_do_not_fit_in_a_frame_are_refused() -> None:
    encoder = PublishEncoder(1, "outbox", 4096)
    headers = {"trace": "t" * 5000}
    with pytest.raises(FieldTooLong, match=r"headers take .* frame of 4,096"):
        encoder.frames("t", b"{}", message_id="m", content_type="c", headers=headers,
                       timestamp=None)
    assert encoder.frames("t", b"{}", message_id="m", content_type="c",
                          headers={"trace": "t" * 3000}, timestamp=None)


@pytest.mark.parametrize("timestamp", [-1, -86_400 * 365, 2**64])
def test_a_timestamp_outside_the_field_is_left_out(timestamp: int) -> None:
    encoder = PublishEncoder(1, "outbox", FRAME_MAX)
    props = pika.BasicProperties(message_id="m", delivery_mode=2, content_type="c",
                                 headers={})
    ours = encoder.frames("t", b"{}", message_id="m", content_type="c", headers={},
                          timestamp=timestamp)
    assert ours == pika_frames(1, "outbox", "t", b"{}", props, FRAME_MAX)


def test_exchange_name_longer_than_a_short_string_is_refused() -> None:
    with pytest.raises(FieldTooLong, match="exchange name"):
        PublishEncoder(1, "x" * 256, FRAME_MAX)


def test_method_frame_cache_stays_bounded() -> None:
    encoder = PublishEncoder(1, "outbox", FRAME_MAX)
    for n in range(MAX_CACHED_ROUTES * 2 + 3):
        encoder.frames(f"topic.{n}", b"", message_id="m", content_type="c", headers={},
                       timestamp=None)
    assert len(encoder._methods) <= MAX_CACHED_ROUTES
