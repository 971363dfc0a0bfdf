"""The header names the relay sets itself, in one place.

A header a writer gives at enqueue time under one of these names would collide with (and
be replaced by) the relay's own: the Kafka connector's ``message_id`` and
``content_type``, the RabbitMQ connector's ``key``, the Debezium router's ``id``, and the
CloudEvents bindings' ``content-type`` and attribute prefixes (Kafka ``ce_``, AMQP
``cloudEvents_`` and the older ``cloudEvents:``).
"""

from __future__ import annotations

MESSAGE_ID = "message_id"  # Kafka: the outbox id (RabbitMQ: the message_id property)
CONTENT_TYPE = "content_type"  # Kafka: the payload's media type (RabbitMQ: a property)
AMQP_KEY = "key"  # RabbitMQ: the message key, which AMQP has no field for
DEBEZIUM_EVENT_ID = "id"  # Debezium mode: the id column, as Debezium's router sends it
CLOUDEVENTS_CONTENT_TYPE = "content-type"  # CloudEvents Kafka binding: datacontenttype
KAFKA_CLOUDEVENTS_PREFIX = "ce_"
AMQP_CLOUDEVENTS_PREFIX = "cloudEvents_"
AMQP_CLOUDEVENTS_OLD_PREFIX = "cloudEvents:"  # binding 1.0.2; receivers accept both

RESERVED_HEADER_NAMES = frozenset({
    MESSAGE_ID, CONTENT_TYPE, AMQP_KEY, DEBEZIUM_EVENT_ID, CLOUDEVENTS_CONTENT_TYPE,
})
RESERVED_HEADER_PREFIXES = (
    KAFKA_CLOUDEVENTS_PREFIX, AMQP_CLOUDEVENTS_PREFIX, AMQP_CLOUDEVENTS_OLD_PREFIX,
)


def is_reserved_header(name: str) -> bool:
    """Whether the relay may set a header called ``name`` itself.

    Exact names compare as written; Kafka header names are case-sensitive, and so are
    AMQP table keys.
    """
    return name in RESERVED_HEADER_NAMES or name.startswith(RESERVED_HEADER_PREFIXES)
