"""outbox-relay: a transactional outbox relay and CDC connector for PostgreSQL."""

from relay.producer import enqueue, enqueue_async, enqueue_many, enqueue_many_async

__all__ = ["enqueue", "enqueue_async", "enqueue_many", "enqueue_many_async"]
__version__ = "0.1.0"
