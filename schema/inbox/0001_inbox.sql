-- outbox-relay inbox migration 1: the consumer-side deduplication table.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.

-- One row per message a consumer has processed, written in the consumer's own
-- transaction together with the handler's effects (see relay.inbox). message_id is text:
-- the relay sends UUIDs, but other producers' ids need not be UUIDs.
CREATE TABLE {schema}.inbox (
  consumer      text NOT NULL CHECK (consumer <> ''),
  message_id    text NOT NULL CHECK (message_id <> ''),
  processed_at  timestamptz NOT NULL DEFAULT now(),
  -- An optional small JSON answer, replayed to callers that send the same id again.
  result        jsonb,
  PRIMARY KEY (consumer, message_id)
);

-- Retention deletes the oldest entries in small batches.
CREATE INDEX inbox_processed_at ON {schema}.inbox (processed_at);

ALTER TABLE {schema}.inbox SET (
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_analyze_scale_factor = 0.05
);
