-- Named queries of CDC mode's set-aside messages (relay/cdc/aside.py): what the stream
-- could not deliver waits in the outbox table and is published from there, with polling
-- mode's failure rules (relay/sql/queries.sql: record_failures, dead_letter, hold_keys,
-- release_holds, mark_sent, delete_sent). {schema} is the quoted schema identifier.

-- name: set_aside
-- Write messages of the stream to the table, in the given order, each with a new seq:
-- the table's order for them is the stream's (commit) order, whatever seq a captured
-- row had. A captured row still there is moved in place (its columns as the writer
-- stored them); an emitted event, a Debezium row or a row already deleted is inserted.
-- Rows already set aside, sent, or dead letters are left alone and not returned.
-- available_at is the created_at: a row available later than created is a delayed
-- message, which migration 8's trigger would move to the scheduled table.
INSERT INTO {schema}.messages AS m
  (id, topic, key, payload, payload_bytes, content_type, headers, created_at, available_at,
   set_aside_at)
SELECT f.id, f.topic, f.key, f.payload, f.payload_bytes, f.content_type, f.headers,
       COALESCE(f.created_at, now()), COALESCE(f.created_at, now()), now()
FROM unnest(%(ids)s::uuid[], %(topics)s::text[], %(keys)s::text[], %(payloads)s::json[],
            %(payload_bytes)s::bytea[], %(content_types)s::text[], %(headers)s::jsonb[],
            %(created)s::timestamptz[])
     WITH ORDINALITY AS f(id, topic, key, payload, payload_bytes, content_type, headers,
                          created_at, n)
WHERE NOT EXISTS (SELECT FROM {schema}.dead_letters d WHERE d.id = f.id)
ORDER BY f.n
ON CONFLICT (id) DO UPDATE
SET seq = DEFAULT, set_aside_at = now()
WHERE m.sent_at IS NULL AND m.parked_at IS NULL AND m.set_aside_at IS NULL
RETURNING m.id, m.seq;

-- name: anything_set_aside
-- Has a drain round anything to do or a key to hold: a set-aside row, due or not, or a
-- key hold. Read without the lock, in a statement of its own: an idle drain asks this
-- instead of running a fenced round, and a row set aside just after it is seen by the
-- next look, as it would have been by the next round.
SELECT EXISTS (
  SELECT FROM {schema}.messages
  WHERE set_aside_at IS NOT NULL AND sent_at IS NULL AND parked_at IS NULL
) OR EXISTS (SELECT FROM {schema}.key_holds WHERE held_until > now());

-- name: try_lock_set_aside
-- One relay at a time drains the set-aside rows (a deposed leader's batch in flight
-- keeps its lock until its transaction ends), so rows of a key never split between two.
SELECT pg_try_advisory_xact_lock(%(lock_key)s);

-- name: lock_set_aside
-- Setting messages aside, and reading the held keys when a stream starts, wait for the
-- lock: a new leader reads the held keys only after a deposed leader's write ended, and
-- the deposed leader's write, made after that, finds it no longer leads (is_leader).
SELECT pg_advisory_xact_lock(%(lock_key)s);

-- name: is_leader
-- A statement of its own after the lock, so that its snapshot is taken after it.
SELECT EXISTS (
  SELECT FROM {schema}.cdc_state WHERE slot_name = %(slot)s AND leader_id = %(leader_id)s
);

-- name: claim_set_aside
-- As claim_batch, over the set-aside rows. Column order is relay.outbox_rows.CLAIM_COLUMNS.
SELECT m.seq, m.id, m.topic, m.key, m.payload, m.payload_bytes, m.content_type,
       NULLIF(m.headers, '{{}}') AS headers, m.created_at, m.attempts
FROM {schema}.messages m
WHERE m.set_aside_at IS NOT NULL AND m.sent_at IS NULL AND m.parked_at IS NULL
  AND m.available_at <= now()
  AND NOT EXISTS (
    SELECT 1 FROM {schema}.key_holds h
    WHERE h.key = m.key AND h.held_until > now()
  )
ORDER BY m.seq
LIMIT %(limit)s
FOR UPDATE OF m SKIP LOCKED;

-- name: held_keys
-- Keys whose new messages the stream must set aside: they have set-aside rows still to
-- publish, or a hold (behind a failure or a dead letter).
SELECT key FROM {schema}.messages
WHERE set_aside_at IS NOT NULL AND sent_at IS NULL AND parked_at IS NULL AND key IS NOT NULL
UNION
SELECT key FROM {schema}.key_holds WHERE held_until > now();

-- name: next_due
-- Seconds until the first set-aside row may be claimed (negative: it may now; NULL:
-- none waits for a time, only for a person).
SELECT EXTRACT(epoch FROM min(GREATEST(m.available_at, h.held_until)) - now())::float8
FROM {schema}.messages m
LEFT JOIN {schema}.key_holds h ON h.key = m.key
WHERE m.set_aside_at IS NOT NULL AND m.sent_at IS NULL AND m.parked_at IS NULL
  AND (h.held_until IS NULL OR h.held_until < 'infinity');
