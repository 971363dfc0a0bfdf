"""The header names the relay sets itself, in one place (what a writer may not use is
``relay.headers``).

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

# Every name above is one a writer may not use (relay.headers holds that rule, which
# the outbox table enforces too); tests/unit/test_formats.py keeps the two in step.
RELAY_SET_NAMES = (MESSAGE_ID, CONTENT_TYPE, AMQP_KEY, DEBEZIUM_EVENT_ID, CLOUDEVENTS_CONTENT_TYPE)
RELAY_SET_PREFIXES = (
    KAFKA_CLOUDEVENTS_PREFIX, AMQP_CLOUDEVENTS_PREFIX, AMQP_CLOUDEVENTS_OLD_PREFIX,
)
