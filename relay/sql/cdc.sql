-- Named queries of CDC mode. {schema} is the quoted schema identifier; {table} and
-- {publication} (in the few queries that have them) are quoted identifiers too.

-- name: claim_leadership
-- Take the slot's session-level advisory lock and, in the same statement, the lease
-- row, so a lock holder always has a lease with its own pid. The lock lasts until this
-- session ends: PostgreSQL releases it the moment it sees a dead relay's connection go.
WITH lock AS MATERIALIZED (SELECT pg_try_advisory_lock(%(lock_key)s) AS held)
INSERT INTO {schema}.cdc_state AS s
  (slot_name, leader_id, leader_name, leader_pid, lease_expires_at)
SELECT %(slot)s, %(leader_id)s, %(name)s, pg_backend_pid(),
       now() + make_interval(secs => %(ttl)s)
FROM lock WHERE lock.held
ON CONFLICT (slot_name) DO UPDATE
SET leader_id = excluded.leader_id, leader_name = excluded.leader_name,
    leader_pid = excluded.leader_pid, lease_expires_at = excluded.lease_expires_at,
    updated_at = now()
RETURNING s.confirmed_lsn::text, s.covered_xmin::text, s.snapshot_done;

-- name: renew_leadership
UPDATE {schema}.cdc_state
SET lease_expires_at = now() + make_interval(secs => %(ttl)s), updated_at = now()
WHERE slot_name = %(slot)s AND leader_id = %(leader_id)s
RETURNING true;

-- name: renew_lead_of_outbox
-- One outbox's part of a shared slot's renewal (relay.cdc.leader): its relays row and its
-- lease row, returning true if the lease is still this relay's. Values bound as literals:
-- the outboxes of the slot renew together, as one query of many statements.
WITH heartbeat AS (
  INSERT INTO {schema}.relays AS r (relay_id, name, mode, expires_at, published)
  VALUES ({relay_id}, {relay_name}, 'cdc', now() + make_interval(secs => {ttl}), {published})
  ON CONFLICT (relay_id) DO UPDATE
  SET heartbeat_at = now(), expires_at = excluded.expires_at, published = excluded.published
)
UPDATE {schema}.cdc_state
SET lease_expires_at = now() + make_interval(secs => {ttl}), updated_at = now()
WHERE slot_name = {slot} AND leader_id = {relay_id}
RETURNING true;

-- name: release_leadership
UPDATE {schema}.cdc_state
SET lease_expires_at = '-infinity', leader_pid = NULL, updated_at = now()
WHERE slot_name = %(slot)s AND leader_id = %(leader_id)s;

-- name: leadership_holder
-- For a standby, of one outbox it selects: the session holding the slot's lock and the
-- slot's walsender (to end if the leader's lease ran out), and this outbox's lease row:
-- the leader covers the outbox when that row is its lock holder's (leader_pid). One row,
-- whether the outbox has a lease row or not.
SELECT s.leader_name, s.leader_pid, s.lease_expires_at < now() AS expired,
       held.lock_pid, held.walsender_pid
FROM (
  SELECT (SELECT l.pid FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = %(lock_hi)s::bigint::oid AND l.objid = %(lock_lo)s::bigint::oid
          LIMIT 1) AS lock_pid,
         (SELECT r.active_pid FROM pg_replication_slots r WHERE r.slot_name = %(slot)s)
           AS walsender_pid
) AS held
LEFT JOIN {schema}.cdc_state s ON s.slot_name = %(slot)s;

-- name: slot_holder
-- For a standby: the session holding the slot's lock and the slot's walsender (to end
-- if the leader's lease ran out).
SELECT (SELECT l.pid FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = %(lock_hi)s::bigint::oid AND l.objid = %(lock_lo)s::bigint::oid
        LIMIT 1) AS lock_pid,
       (SELECT r.active_pid FROM pg_replication_slots r WHERE r.slot_name = %(slot)s)
         AS walsender_pid;

-- name: lease_of_outbox
-- One outbox's lease row, whose it is and whether it ran out: a standby reads every
-- outbox's in one query, these joined by UNION ALL (relay.cdc.leader).
SELECT {schema_name}::text AS schema_name, s.leader_name, s.leader_pid,
       s.lease_expires_at < now() AS expired
FROM {schema}.cdc_state s
WHERE s.slot_name = %(slot)s

-- name: end_session
SELECT pg_terminate_backend(%(pid)s, 5000);

-- name: slot_info
SELECT slot_name, plugin, slot_type, database, active_pid, wal_status,
       confirmed_flush_lsn::text AS confirmed_flush, restart_lsn::text AS restart,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots
WHERE slot_name = %(slot)s;

-- name: slot_status
-- slot_info for `outbox-relay status` and the metrics: only this database's slot. A slot
-- of the same name that decodes another database of the cluster is not ours to show.
SELECT slot_name, active_pid, wal_status,
       confirmed_flush_lsn::text AS confirmed_flush, restart_lsn::text AS restart,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots
WHERE slot_name = %(slot)s AND database = current_database();

-- name: drop_slot
SELECT pg_drop_replication_slot(%(slot)s);

-- name: save_progress
-- Written before the position is reported to the server. Once confirmed_lsn reaches the
-- candidate's LSN, every transaction the candidate's snapshot saw as finished has been
-- published: its xmin becomes covered_xmin and a new candidate is taken. (The snapshot is
-- the statement's, taken before pg_current_wal_insert_lsn() runs.)
UPDATE {schema}.cdc_state SET
  confirmed_lsn = %(lsn)s::pg_lsn,
  covered_xmin = CASE WHEN candidate_lsn <= %(lsn)s::pg_lsn
                      THEN candidate_xmin ELSE covered_xmin END,
  candidate_xmin = CASE WHEN candidate_lsn IS NULL OR candidate_lsn <= %(lsn)s::pg_lsn
                        THEN pg_snapshot_xmin(pg_current_snapshot()) ELSE candidate_xmin END,
  candidate_lsn = CASE WHEN candidate_lsn IS NULL OR candidate_lsn <= %(lsn)s::pg_lsn
                       THEN pg_current_wal_insert_lsn() ELSE candidate_lsn END,
  updated_at = now()
WHERE slot_name = %(slot)s AND leader_id = %(leader_id)s
RETURNING true;

-- name: begin_snapshot
UPDATE {schema}.cdc_state
SET confirmed_lsn = %(lsn)s::pg_lsn, snapshot_done = false,
    candidate_lsn = NULL, candidate_xmin = NULL, updated_at = now()
WHERE slot_name = %(slot)s AND leader_id = %(leader_id)s
RETURNING true;

-- name: finish_snapshot
UPDATE {schema}.cdc_state
SET snapshot_done = true, covered_xmin = %(covered)s::xid8, updated_at = now()
WHERE slot_name = %(slot)s AND leader_id = %(leader_id)s
RETURNING true;

-- name: snapshot_xmin
SELECT pg_snapshot_xmin(pg_current_snapshot())::text;

-- name: snapshot_rows
-- Pending rows that may not have been published: all of them on a first start, those
-- written by transactions the watermark does not cover after a slot was lost. Rows set
-- aside are published from the table (relay/cdc/aside.py), not here.
SELECT id, topic, key, payload, payload_bytes, content_type, headers, created_at
FROM {schema}.messages
WHERE sent_at IS NULL AND parked_at IS NULL AND set_aside_at IS NULL
  AND (%(covered)s::xid8 IS NULL OR NOT {schema}.cdc_xid_precedes(xmin, %(covered)s::xid8))
ORDER BY seq;

-- name: snapshot_rows_of_table
-- A Debezium table's rows: all of them on a first start with --cdc-snapshot existing,
-- those the watermark does not cover after a slot was lost. Such a table has no sequence
-- column: the oldest writing transactions first (age of xmin), then the rows in the
-- order they lie in the table, which for an append-only table is the order of insertion.
SELECT * FROM {table}
WHERE %(covered)s::xid8 IS NULL OR NOT {schema}.cdc_xid_precedes(xmin, %(covered)s::xid8)
ORDER BY age(xmin) DESC, ctid;

-- name: mark_sent
-- After the snapshot published rows; those it set aside are not sent yet.
UPDATE {schema}.messages
SET sent_at = now(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY(%(ids)s) AND sent_at IS NULL AND parked_at IS NULL AND set_aside_at IS NULL;

-- name: park
-- A message the broker refused for good becomes a parked row, so `status` and the
-- dead-letter tools see it; a row that is still in the table is parked in place.
INSERT INTO {schema}.messages AS m
  (id, topic, key, payload, payload_bytes, content_type, headers, attempts, last_error,
   parked_at)
SELECT f.id, f.topic, f.key, f.payload, f.payload_bytes, f.content_type, f.headers, 1,
       f.error, now()
FROM unnest(%(ids)s::uuid[], %(topics)s::text[], %(keys)s::text[], %(payloads)s::json[],
            %(payload_bytes)s::bytea[], %(content_types)s::text[], %(headers)s::jsonb[],
            %(errors)s::text[])
     AS f(id, topic, key, payload, payload_bytes, content_type, headers, error)
ON CONFLICT (id) DO UPDATE
SET parked_at = now(), last_error = excluded.last_error, attempts = m.attempts + 1;

-- name: heartbeat
-- Non-transactional, with a prefix nobody publishes: it only gives the walsender a
-- position to report when the server would otherwise send nothing.
SELECT pg_logical_emit_message(false, 'outbox-relay-heartbeat', '');

-- name: purge_published
-- Retention in CDC mode: rows are never marked sent; a row is known published once the
-- watermark covers its transaction. A set-aside row is not: it waits to be published.
DELETE FROM {schema}.messages
WHERE seq IN (
  SELECT m.seq FROM {schema}.messages m
  WHERE m.sent_at IS NULL AND m.parked_at IS NULL AND m.set_aside_at IS NULL
    AND m.created_at < now() - make_interval(secs => %(retention)s)
    AND {schema}.cdc_xid_precedes(
          m.xmin,
          (SELECT covered_xmin FROM {schema}.cdc_state WHERE slot_name = %(slot)s))
  ORDER BY m.seq
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
);

-- name: retention_due
-- Seconds until the oldest row retention could delete is older than %(retention)s: a
-- sent row by its sent_at, a captured one by its created_at (zero or less: one is, and
-- waits for the watermark; NULL: none). Each side reads one index's first entry.
SELECT EXTRACT(epoch FROM least(
  (SELECT min(sent_at) FROM {schema}.messages WHERE sent_at IS NOT NULL),
  (SELECT created_at FROM {schema}.messages
   WHERE sent_at IS NULL AND parked_at IS NULL AND set_aside_at IS NULL
   ORDER BY seq LIMIT 1)
) + make_interval(secs => %(retention)s) - now())::float8;

-- name: publication_tables
SELECT p.pubinsert, t.schemaname, t.tablename
FROM pg_publication p
LEFT JOIN pg_publication_tables t ON t.pubname = p.pubname
WHERE p.pubname = %(publication)s;

-- name: create_publication
CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert');

-- name: add_publication_table
-- An outbox joins the slot its database's other outboxes stream (relay.cdc.group).
ALTER PUBLICATION {publication} ADD TABLE {table};

-- name: state
SELECT confirmed_lsn::text AS confirmed_lsn, covered_xmin::text AS covered_xmin,
       snapshot_done, leader_name, leader_pid, lease_expires_at > now() AS leader_alive,
       updated_at
FROM {schema}.cdc_state
WHERE slot_name = %(slot)s;

-- name: server_settings
SELECT current_setting('wal_level') AS wal_level,
       current_setting('max_replication_slots')::int AS max_slots,
       current_setting('max_wal_senders')::int AS max_senders,
       (SELECT count(*) FROM pg_replication_slots)::int AS used_slots,
       (SELECT count(*) FROM pg_stat_replication)::int AS used_senders,
       (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
         AS can_replicate,
       current_user AS role_name,
       current_database() AS database,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal_position;

-- name: table_columns
SELECT a.attname
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;
