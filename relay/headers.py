"""Header names a writer may not use: the relay sets them itself, on some broker.

One rule for every connector, checked when a message is written (by the outbox table's
CHECK constraint, the SQL functions, ``emit`` and these Python helpers), so a consumer
never has to guess whether ``message_id`` came from the relay or from the application:

- exactly ``id``, ``key``, ``message_id``, ``content_type`` and ``content-type``;
- anything starting with ``ce_``, ``ce-``, ``cloudevents_`` or ``cloudevents:``
  (CloudEvents' attributes in its Kafka, HTTP and AMQP bindings) or with
  ``outbox_relay_`` or ``outbox-relay-`` (the relay's own, later);

compared without regard to case (HTTP and many consumer libraries ignore it). The same
rule is written once more in SQL, as a regular expression, in schema/0009_writer_api.sql;
tests/unit/test_reserved_headers.py holds the two together.
"""

from __future__ import annotations

from collections.abc import Iterable

RESERVED_NAMES = frozenset({"id", "key", "message_id", "content_type", "content-type"})
RESERVED_PREFIXES = (
    "ce_",
    "ce-",
    "cloudevents_",
    "cloudevents:",
    "outbox_relay_",
    "outbox-relay-",
)


def is_reserved(name: str) -> bool:
    folded = name.lower()
    return folded in RESERVED_NAMES or folded.startswith(RESERVED_PREFIXES)


def first_reserved(names: Iterable[str]) -> str | None:
    """The first of ``names`` that a writer may not use, or None."""
    return next((name for name in names if is_reserved(name)), None)


def reserved_header_message(name: str) -> str:
    """The error a writer gets, in one sentence (the SQL functions say the same)."""
    return (
        f"the header name {name!r} is reserved: the relay sets it itself (reserved: id, key, "
        "message_id, content_type, content-type and names starting with ce_, ce-, "
        "cloudevents_, cloudevents: or outbox_relay_/outbox-relay-, in any case)"
    )
