"""Change data capture: stream the outbox from a logical replication slot."""
