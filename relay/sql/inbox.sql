-- Queries of the consumer inbox (relay.inbox). The sync and asyncio variants share them.

-- name: claim_message
-- Blocks while another transaction holds an uncommitted row for the same id, then
-- returns nothing if that transaction committed, or inserts if it rolled back. Never a
-- unique violation.
INSERT INTO {schema}.inbox (consumer, message_id)
VALUES (%(consumer)s, %(message_id)s)
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING true;

-- name: stored_result
SELECT result FROM {schema}.inbox
WHERE consumer = %(consumer)s AND message_id = %(message_id)s;

-- name: store_result
UPDATE {schema}.inbox SET result = %(result)s::jsonb
WHERE consumer = %(consumer)s AND message_id = %(message_id)s;

-- name: purge_inbox
-- One small batch; SKIP LOCKED passes over rows a consumer transaction has locked.
DELETE FROM {schema}.inbox
WHERE (consumer, message_id) IN (
  SELECT consumer, message_id FROM {schema}.inbox
  WHERE processed_at < now() - make_interval(secs => %(older_than)s)
    AND (%(consumer)s::text IS NULL OR consumer = %(consumer)s::text)
  ORDER BY processed_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
);
