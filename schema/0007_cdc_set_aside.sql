-- outbox-relay migration 7: CDC mode sets aside the messages it could not deliver.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.

-- In CDC mode a message the broker did not take on its first try (a refusal, a nack, a
-- message behind a failed one of its key) is set aside: written to the outbox table
-- with set_aside_at, and from then on retried, dead-lettered and held exactly as in
-- polling mode, while the stream goes on and confirms the slot past it. A set-aside row
-- is published from the table, never from the WAL, and is never purged unpublished.
-- `outbox-relay dead-letters retry` puts messages back set aside too; polling relays
-- read no difference.
ALTER TABLE {schema}.messages ADD COLUMN set_aside_at timestamptz;

-- The CDC relay claims set-aside rows in sequence order; usually there are none.
CREATE INDEX messages_set_aside ON {schema}.messages (seq)
  WHERE set_aside_at IS NOT NULL AND sent_at IS NULL AND parked_at IS NULL;
