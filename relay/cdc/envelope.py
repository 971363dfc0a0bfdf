"""The envelope of events written with ``<schema>.emit()`` / ``emit_binary()``.

A transactional logical message whose content is a one-line JSON header, a newline,
then the body::

    {"v": 1, "id": "<uuid>", "topic": "...", "key": "..." | null,
     "headers": {...}, "content_type": "...", "body": "json" | "bytes" | "null"}\\n<body>

``json`` bodies are published as written (like outbox rows),
``bytes`` byte for byte, ``null`` as a tombstone. ``encode_envelope`` builds the same
bytes in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

import orjson

from relay.cdc.mapping import MappingError, header_text, json_text
from relay.model import OutboxMessage

ENVELOPE_VERSION = 1
_BODY_KINDS = ("json", "bytes", "null")


def decode_envelope(content: bytes, position: int) -> OutboxMessage:
    """The message an emitted envelope carries; MappingError when it is not one."""
    head, newline, body = content.partition(b"\n")
    if not newline:
        raise MappingError("the logical message has no envelope header line")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise MappingError(f"the envelope header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != ENVELOPE_VERSION:
        raise MappingError(f"unknown envelope version {_version(header)!r}")
    return OutboxMessage(
        id=_uuid(header.get("id")),
        topic=_text(header, "topic"),
        key=_optional_text(header, "key"),
        payload=_body(header.get("body"), body),
        headers=_headers(header.get("headers")),
        content_type=_text(header, "content_type"),
        position=position,
    )


def encode_envelope(message: OutboxMessage, *, body_kind: str) -> bytes:
    """The content ``cdc_emit`` writes for ``message`` (tests and other producers)."""
    if body_kind not in _BODY_KINDS:
        raise ValueError(f"body_kind must be one of {_BODY_KINDS}")
    header = {
        "v": ENVELOPE_VERSION,
        "id": str(message.id),
        "topic": message.topic,
        "key": message.key,
        "headers": dict(message.headers),
        "content_type": message.content_type,
        "body": body_kind,
    }
    return orjson.dumps(header) + b"\n" + (message.payload or b"")


def _version(header: object) -> object:
    return header.get("v") if isinstance(header, dict) else type(header).__name__


def _uuid(value: object) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise MappingError(f"the envelope id {value!r} is not a UUID") from None


def _text(header: Mapping[str, object], field: str) -> str:
    value = header.get(field)
    if not isinstance(value, str) or not value:
        raise MappingError(f"the envelope has no {field}")
    return value


def _optional_text(header: Mapping[str, object], field: str) -> str | None:
    value = header.get(field)
    if value is not None and not isinstance(value, str):
        raise MappingError(f"the envelope {field} is not a string")
    return value


def _headers(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MappingError("the envelope headers are not a JSON object")
    return {str(name): header_text(item) for name, item in value.items()}


def _body(kind: object, body: bytes) -> bytes | None:
    if kind == "json":
        return json_text(body)
    if kind == "bytes":
        return body
    if kind == "null":
        return None
    raise MappingError(f"unknown envelope body kind {kind!r}")
