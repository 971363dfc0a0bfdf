"""The consumer inbox: idempotent message handling for consumers of the relay.

The relay delivers at least once. A consumer records each message id in its own
PostgreSQL transaction, together with whatever its handler writes; a redelivered id is
skipped. See docs/inbox.md.

    inbox = Inbox(consumer="billing", schema="outbox")
    outcome = inbox.process(conn, confluent_kafka_message_id(msg), apply_payment)
    # then commit the offset / ack the delivery
"""

from relay.inbox.adapters import (
    MESSAGE_ID_HEADER,
    aio_pika_message_id,
    aiokafka_message_id,
    confluent_kafka_message_id,
    pika_message_id,
)
from relay.inbox.core import InboxClaim, InboxResult, MissingMessageIdError
from relay.inbox.inbox import AsyncInbox, Inbox
from relay.inbox.retention import (
    DEFAULT_DEDUPE_WINDOW,
    DEFAULT_PURGE_BATCH,
    purge_inbox,
    purge_inbox_async,
)

__all__ = [
    "DEFAULT_DEDUPE_WINDOW",
    "DEFAULT_PURGE_BATCH",
    "MESSAGE_ID_HEADER",
    "AsyncInbox",
    "Inbox",
    "InboxClaim",
    "InboxResult",
    "MissingMessageIdError",
    "aio_pika_message_id",
    "aiokafka_message_id",
    "confluent_kafka_message_id",
    "pika_message_id",
    "purge_inbox",
    "purge_inbox_async",
]
