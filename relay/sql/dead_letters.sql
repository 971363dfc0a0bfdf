-- Named queries of `outbox-relay dead-letters`. {schema} is the quoted schema identifier.
-- Filters are optional: a NULL parameter matches everything.

-- name: list
SELECT seq, id, topic, key, attempts, last_error, reason, created_at, dead_at
FROM {schema}.dead_letters
WHERE (%(topic)s::text IS NULL OR topic = %(topic)s)
  AND (%(key)s::text IS NULL OR key = %(key)s)
  AND (%(older_than)s::float8 IS NULL
       OR dead_at < now() - make_interval(secs => %(older_than)s))
  AND (%(newer_than)s::float8 IS NULL
       OR dead_at >= now() - make_interval(secs => %(newer_than)s))
  AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s))
ORDER BY seq
LIMIT %(limit)s;

-- name: count
SELECT count(*)
FROM {schema}.dead_letters
WHERE (%(topic)s::text IS NULL OR topic = %(topic)s)
  AND (%(key)s::text IS NULL OR key = %(key)s)
  AND (%(older_than)s::float8 IS NULL
       OR dead_at < now() - make_interval(secs => %(older_than)s))
  AND (%(newer_than)s::float8 IS NULL
       OR dead_at >= now() - make_interval(secs => %(newer_than)s))
  AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s));

-- name: show
SELECT d.*, h.held_until IS NOT NULL AS key_held
FROM {schema}.dead_letters d
LEFT JOIN {schema}.key_holds h ON h.key = d.key AND h.held_until = 'infinity'
WHERE d.id = %(id)s;

-- name: retry
-- Back into the outbox with the original seq, so the message goes out before the
-- messages of its key that waited behind it. Attempts start again from zero. Set aside:
-- a CDC relay publishes it from the table, in that order, not from the stream (a
-- polling relay sees no difference). available_at is its created_at: a row available
-- later than created is a delayed message, which migration 8 moves to the scheduled
-- table and gives a new seq.
WITH moved AS (
  DELETE FROM {schema}.dead_letters WHERE seq = ANY(%(seqs)s) RETURNING *
)
INSERT INTO {schema}.messages
  (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
   available_at, last_error, set_aside_at)
OVERRIDING SYSTEM VALUE
SELECT seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
       created_at, last_error, now()
FROM moved
RETURNING key;

-- name: drop
DELETE FROM {schema}.dead_letters WHERE seq = ANY(%(seqs)s) RETURNING key;

-- name: release_keys
-- A key held for a dead letter flows again once none of its dead letters is left.
DELETE FROM {schema}.key_holds h
WHERE h.key = ANY(%(keys)s) AND h.held_until = 'infinity'
  AND NOT EXISTS (SELECT 1 FROM {schema}.dead_letters d WHERE d.key = h.key);
