-- Named queries of the relay. {schema} is the quoted schema identifier.

-- name: lock_leased_buckets
-- The buckets this relay leases, each locked for this transaction with an advisory lock:
-- a relay that lost a bucket while frozen still holds its lock, so the new owner cannot
-- overtake its in-flight rows until that transaction ends. This must be a statement of
-- its own, before claim_batch: under READ COMMITTED a statement's snapshot is taken when
-- it starts, so a claim that took the lock mid-statement could still read rows and key
-- holds from before the previous owner's commit.
-- Each claim lane of a relay takes only its own share of the leased buckets (bucket
-- modulo the lane count), so a key is drained by one lane and stays in order.
-- The buckets it locked stay in a setting of this transaction for claim_batch to read,
-- so the two statements go to the server together, in one round trip
-- (relay.poll.poller.lock_and_claim), without the buckets coming back to the relay.
SELECT set_config('outbox_relay.locked_buckets', COALESCE(array_agg(bucket)::text, '{{}}'), true)
FROM (
  SELECT bucket FROM {schema}.bucket_leases
  WHERE relay_id = %(relay_id)s AND expires_at > now()
    AND bucket %% %(lanes)s = %(lane)s
  OFFSET 0
) owned
WHERE pg_try_advisory_xact_lock(%(lock_space)s, bucket);

-- name: claim_batch
-- Pending rows of the locked buckets, in sequence order, skipping keys held behind a
-- failed or dead-lettered message. The buckets are the ones lock_leased_buckets locked
-- in this transaction, unless %(buckets)s names them (a test or benchmark claiming
-- without the lock).
-- Column order is relay.outbox_rows.CLAIM_COLUMNS. The payload (json) loads as its
-- text and the headers (jsonb, NULL when empty, the usual case) as an object.
SELECT m.seq, m.id, m.topic, m.key, m.payload, m.payload_bytes, m.content_type,
       NULLIF(m.headers, '{{}}') AS headers, m.created_at, m.attempts
FROM {schema}.messages m
WHERE m.sent_at IS NULL AND m.parked_at IS NULL
  AND m.available_at <= now()
  -- A scalar subquery (cast, so not ANY's subquery form): the array is read from the
  -- setting once per claim, not once per row.
  AND m.bucket = ANY((SELECT COALESCE(
    %(buckets)s::smallint[],
    current_setting('outbox_relay.locked_buckets', true)::smallint[]))::smallint[])
  AND NOT EXISTS (
    SELECT 1 FROM {schema}.key_holds h
    WHERE h.key = m.key AND h.held_until > now()
  )
ORDER BY m.seq
LIMIT %(limit)s
FOR UPDATE OF m SKIP LOCKED;

-- name: mark_sent
-- The seqs parameter is an array literal (relay.outbox_rows.bigint_array): psycopg
-- adapts a list of 500 ints one element at a time in Python.
UPDATE {schema}.messages
SET sent_at = now(), attempts = attempts + 1, last_error = NULL
WHERE seq = ANY(%(seqs)s::bigint[]);

-- name: delete_sent
DELETE FROM {schema}.messages WHERE seq = ANY(%(seqs)s::bigint[]);

-- name: release_holds
-- A held key whose message finally went through flows again.
DELETE FROM {schema}.key_holds WHERE key = ANY(%(keys)s) AND held_until <> 'infinity';

-- name: record_failures
-- A failed attempt (the broker was up and said no, or did not confirm this message).
UPDATE {schema}.messages AS m
SET attempts = m.attempts + 1,
    last_error = f.error,
    -- A keyed row waits through its key's hold; its own delay would let a later row of
    -- the key become claimable first.
    available_at = CASE WHEN m.key IS NULL THEN now() + make_interval(secs => f.delay)
                        ELSE now() END
FROM unnest(%(seqs)s::bigint[], %(errors)s::text[], %(delays)s::float8[])
     AS f(seq, error, delay)
WHERE m.seq = f.seq;

-- name: dead_letter
-- Move messages to the dead letters with their error, keeping seq (a retry puts them
-- back in their original place in the key's order).
WITH f AS (
  SELECT * FROM unnest(%(seqs)s::bigint[], %(errors)s::text[], %(reasons)s::text[])
    AS f(seq, error, reason)
), moved AS (
  DELETE FROM {schema}.messages m USING f
  WHERE m.seq = f.seq
  RETURNING m.seq, m.id, m.topic, m.key, m.payload, m.payload_bytes, m.content_type,
            m.headers, m.created_at, m.attempts + 1 AS attempts, f.error, f.reason
)
INSERT INTO {schema}.dead_letters AS d
  (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
   attempts, last_error, reason)
SELECT * FROM moved
ON CONFLICT (id) DO UPDATE
SET last_error = excluded.last_error, reason = excluded.reason,
    attempts = excluded.attempts, dead_at = now();

-- name: hold_keys
-- Hold each failed key until its retry time; a dead letter (with --on-poison block)
-- holds its key until a person retries or drops it.
INSERT INTO {schema}.key_holds AS h (key, held_until, seq, reason)
SELECT f.key, CASE WHEN f.park THEN 'infinity'::timestamptz
                   ELSE now() + make_interval(secs => f.delay) END,
       f.seq, f.error
FROM unnest(%(keys)s::text[], %(seqs)s::bigint[], %(errors)s::text[],
            %(delays)s::float8[], %(parks)s::bool[]) AS f(key, seq, error, delay, park)
ON CONFLICT (key) DO UPDATE
SET held_until = GREATEST(h.held_until, excluded.held_until),
    seq = LEAST(h.seq, excluded.seq),
    reason = excluded.reason;

-- name: heartbeat
INSERT INTO {schema}.relays AS r (relay_id, name, mode, expires_at, published)
VALUES (%(relay_id)s, %(name)s, %(mode)s, now() + make_interval(secs => %(ttl)s), %(published)s)
ON CONFLICT (relay_id) DO UPDATE
SET heartbeat_at = now(), expires_at = excluded.expires_at, published = excluded.published;

-- name: prune_relays
DELETE FROM {schema}.relays WHERE expires_at < now() - interval '1 hour';

-- name: renew_leases
-- A lease tick in one statement (relay.poll.leases): this relay's heartbeat, the count of
-- live relays of its mode, and its buckets renewed, as one sorted array, or NULL when
-- they are the ones it held ({held}, sorted): the usual tick then returns two numbers,
-- not 256 of them to compare. The parts share one snapshot, so the count cannot see this
-- heartbeat: it counts the others and adds one.
-- Its values are bound as literals (relay.sqlfiles.bind), not sent as parameters: the
-- outboxes of a database send theirs together, as one query of many statements
-- (relay.poll.shared.LeaseTicker), which only the simple query protocol takes.
WITH heartbeat AS (
  INSERT INTO {schema}.relays AS r (relay_id, name, mode, expires_at, published)
  VALUES ({relay_id}, {relay_name}, {mode}, now() + make_interval(secs => {ttl}), {published})
  ON CONFLICT (relay_id) DO UPDATE
  SET heartbeat_at = now(), expires_at = excluded.expires_at, published = excluded.published
), renewed AS (
  UPDATE {schema}.bucket_leases
  SET expires_at = now() + make_interval(secs => {ttl})
  WHERE relay_id = {relay_id} AND expires_at > now()
  RETURNING bucket
)
SELECT 1 + (SELECT count(*) FROM {schema}.relays
            WHERE expires_at > now() AND mode = {mode} AND relay_id <> {relay_id})::int,
       (SELECT NULLIF(COALESCE(array_agg(bucket ORDER BY bucket), '{{}}'),
                      {held}::smallint[])
        FROM renewed);

-- name: acquire_leases
UPDATE {schema}.bucket_leases AS l
SET relay_id = %(relay_id)s, expires_at = now() + make_interval(secs => %(ttl)s)
WHERE l.bucket IN (
  SELECT bucket FROM {schema}.bucket_leases
  WHERE relay_id IS NULL OR expires_at <= now()
  ORDER BY bucket
  LIMIT %(wanted)s
  FOR UPDATE SKIP LOCKED
)
RETURNING l.bucket;

-- name: release_leases
UPDATE {schema}.bucket_leases
SET relay_id = NULL, expires_at = '-infinity'
WHERE relay_id = %(relay_id)s AND bucket = ANY(%(buckets)s);

-- name: release_all_leases
UPDATE {schema}.bucket_leases
SET relay_id = NULL, expires_at = '-infinity'
WHERE relay_id = %(relay_id)s;

-- name: forget_relay
DELETE FROM {schema}.relays WHERE relay_id = %(relay_id)s;

-- name: purge_sent
DELETE FROM {schema}.messages
WHERE seq IN (
  SELECT seq FROM {schema}.messages
  WHERE sent_at < now() - make_interval(secs => %(retention)s)
  ORDER BY sent_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
);

-- name: enqueue_json
-- relay.enqueue() inserts the row itself: a call to the SQL function would cost the
-- server a second executor per row. The usual message (JSON, no headers) names only
-- the columns it sets, so the rest keep the table's defaults. Its parameters are
-- positional (topic, key, payload): psycopg maps a tuple onto them for less than a dict.
INSERT INTO {schema}.messages (topic, key, payload)
VALUES (%s, %s, %s::json)
RETURNING id;

-- name: enqueue_message
-- Any other message: every column a writer may set (the others are the relay's). Due at
-- deliver_at, or after a delay counted by the database's clock from this statement, or
-- (neither, or a time already past) at once: GREATEST ignores NULLs.
INSERT INTO {schema}.messages
  (topic, key, payload, payload_bytes, headers, content_type, available_at)
VALUES (%(topic)s, %(key)s, %(payload)s::json, %(payload_bytes)s::bytea, %(headers)s::jsonb,
        %(content_type)s,
        GREATEST(now(), %(deliver_at)s::timestamptz, clock_timestamp() + %(delay)s::interval))
RETURNING id;

-- name: enqueue_messages
-- relay.enqueue_many(): one statement for the whole list, each column an array (sent in
-- binary: psycopg escapes a text array element by element in Python). unnest yields the
-- rows in array order and the identity numbers them as they come, so seq (the claim's
-- order) follows the list; RETURNING gives the ids in that order. A column that is NULL
-- for every message comes as one NULL, which unnest pads out.
INSERT INTO {schema}.messages AS m
  (topic, key, payload, payload_bytes, headers, content_type, available_at)
SELECT r.topic, r.key, r.payload::json, r.payload_bytes, COALESCE(r.headers::jsonb, '{{}}'),
       COALESCE(r.content_type, 'application/json'),
       GREATEST(now(), r.deliver_at, clock_timestamp() + r.delay)
FROM unnest(%(topics)b::text[], %(keys)b::text[], %(payloads)b::text[],
            %(payload_bytes)b::bytea[], %(headers)b::text[], %(content_types)b::text[],
            %(deliver_at)b::timestamptz[], %(delays)b::interval[])
     AS r(topic, key, payload, payload_bytes, headers, content_type, deliver_at, delay)
RETURNING m.id;

-- name: status_backlog
-- Each figure reads one partial index (or the small dead-letter table), so status and
-- the metrics sampler stay cheap on a large outbox. The two counts stop at %(cap)s: the
-- sampler runs this every few seconds in every relay, and counting 100,000 pending rows
-- took ~70 ms (rows this fresh are not yet all-visible, so each entry visits the heap).
SELECT
  (SELECT count(*) FROM (
     SELECT FROM {schema}.messages
     WHERE sent_at IS NULL AND parked_at IS NULL LIMIT %(cap)s) p) AS pending,
  (SELECT EXTRACT(epoch FROM now() - created_at)::float8 FROM {schema}.messages
   WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT 1) AS oldest_age,
  (SELECT count(*) FROM {schema}.dead_letters) AS parked,
  (SELECT count(*) FROM (
     SELECT FROM {schema}.messages
     WHERE sent_at > now() - interval '1 minute' LIMIT %(cap)s) s) AS sent_last_minute;

-- name: status_scheduled
-- Delayed messages not yet due (relay.scheduler), counted up to %(cap)s, and the next
-- due time; both read the scheduled table's (available_at, seq) index.
SELECT
  (SELECT count(*) FROM (SELECT FROM {schema}.scheduled LIMIT %(cap)s) s) AS scheduled,
  (SELECT min(available_at) FROM {schema}.scheduled) AS next_due,
  (SELECT EXTRACT(epoch FROM min(available_at) - now())::float8
   FROM {schema}.scheduled) AS next_due_in;

-- name: status_relays
SELECT r.relay_id, r.name, r.mode, r.started_at, r.heartbeat_at, r.published,
       r.expires_at > now() AS alive,
       coalesce(array_agg(l.bucket ORDER BY l.bucket)
                FILTER (WHERE l.bucket IS NOT NULL), '{{}}') AS buckets
FROM {schema}.relays r
LEFT JOIN {schema}.bucket_leases l ON l.relay_id = r.relay_id AND l.expires_at > now()
GROUP BY r.relay_id
ORDER BY r.started_at;

-- name: held_keys
SELECT count(*) FROM {schema}.key_holds WHERE held_until > now();

-- name: set_listening
-- Whether writers should NOTIFY this relay (relay.poll.wakeups.WakeupSwitch).
UPDATE {schema}.relays SET listening = %(listening)s WHERE relay_id = %(relay_id)s;

-- name: next_due
-- Seconds until the earliest delayed message is due (zero or less: due now; NULL: none).
-- A look of its own, before promote_due: an INSERT fires the outbox's statement trigger
-- (and so a NOTIFY) even when it inserts nothing.
SELECT EXTRACT(epoch FROM min(available_at) - now())::float8 FROM {schema}.scheduled;

-- name: promote_due
-- Move the delayed messages that are due from the scheduled table into the outbox, the
-- earliest due first, in one transaction (migration 8 says why they wait apart). Each
-- gets a new seq here, so it takes its place in its key's order now. One relay at a time
-- (a transaction-level advisory lock), so messages that fell due one after another get
-- their seqs in that order; a relay that does not get the lock moves nothing.
-- created_at becomes the due time: the confirm latency and the backlog age count from
-- when the message was due, not from when it was written. An id already in the outbox
-- (a writer that chose its own ids) stands for this message: the inbox would drop one
-- of the two anyway; `moved` minus `promoted` counts them.
-- next_due_in: seconds until the earliest message that is not due yet (NULL: none).
WITH lock AS MATERIALIZED (
  SELECT pg_try_advisory_xact_lock(%(lock_space)s, %(lock_key)s) AS held
), due AS MATERIALIZED (
  SELECT s.seq FROM {schema}.scheduled s
  WHERE (SELECT held FROM lock) AND s.available_at <= now()
  ORDER BY s.available_at, s.seq
  LIMIT %(limit)s
  FOR UPDATE OF s SKIP LOCKED
), moved AS (
  DELETE FROM {schema}.scheduled s USING due WHERE s.seq = due.seq
  RETURNING s.*
), promoted AS (
  INSERT INTO {schema}.messages
    (id, topic, key, payload, payload_bytes, content_type, headers, created_at,
     available_at)
  SELECT id, topic, key, payload, payload_bytes, content_type, headers, available_at,
         available_at
  FROM moved
  ORDER BY available_at, seq
  ON CONFLICT (id) DO NOTHING
  RETURNING 1
)
SELECT (SELECT count(*) FROM moved)::int AS moved,
       (SELECT count(*) FROM promoted)::int AS promoted,
       (SELECT held FROM lock) AS held,
       (SELECT EXTRACT(epoch FROM min(s.available_at) - now())::float8
        FROM {schema}.scheduled s WHERE s.available_at > now()) AS next_due_in;
