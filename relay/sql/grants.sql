-- The privileges each kind of outbox-relay role needs: `outbox-relay migrate
-- --print-grants ROLE --mode MODE`. {schema}, {role} and {publication} are quoted
-- identifiers, {role_name} a quoted literal; literal braces are doubled. Run the output as
-- the owner of the outbox schema (the role that ran `outbox-relay migrate`), after it.

-- name: connect
-- CONNECT is PUBLIC's by default: then there is nothing to grant (and a schema owner who
-- does not own the database would only get the warning "no privileges were granted").
-- Where PUBLIC's was revoked, only the database owner (or a superuser) can grant it.
DO $grant$ BEGIN
  IF pg_catalog.has_database_privilege({role_name}, current_database(), 'CONNECT') THEN
    NULL;
  ELSIF pg_catalog.has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), {role_name});
  ELSE
    RAISE WARNING 'role % may not connect to database %, and only its owner can allow it',
      {role_name}, current_database()
      USING HINT = format('As the owner of database %I run: GRANT CONNECT ON DATABASE %I TO %I',
                          current_database(), current_database(), {role_name});
  END IF;
END $grant$;
GRANT USAGE ON SCHEMA {schema} TO {role};

-- name: poll
-- require_schema reads the version; status reads everything below.
GRANT SELECT ON {schema}.schema_migrations TO {role};
-- claim (SELECT ... FOR UPDATE), mark sent, record failures, delete on ack, retention;
-- INSERT for `outbox-relay dead-letters retry`, which puts a message back.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.messages TO {role};
-- move refused messages to the dead letters; `outbox-relay dead-letters` reads and drops.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.dead_letters TO {role};
-- hold keys behind a failed message and release them.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.key_holds TO {role};
-- heartbeat, prune dead relays, forget itself on shutdown.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.relays TO {role};
-- lease, renew and release buckets (the 256 rows exist; they are never inserted).
GRANT SELECT, UPDATE ON {schema}.bucket_leases TO {role};
-- `outbox-relay status` shows the CDC slot's state, if there is one.
GRANT SELECT ON {schema}.cdc_state TO {role};
-- move delayed messages into the outbox when due (SELECT ... FOR UPDATE, DELETE), status.
GRANT SELECT, UPDATE, DELETE ON {schema}.scheduled TO {role};
-- The outbox's CHECK on headers calls it on every INSERT and UPDATE of a row.
GRANT EXECUTE ON FUNCTION {schema}.valid_headers(jsonb) TO {role};

-- name: cdc
-- Logical decoding also needs the REPLICATION attribute: see cdc_superuser, printed after
-- the COMMIT because only a superuser may give it. pg_hba.conf must admit the role to
-- this database; a logical replication connection matches ordinary database lines.
GRANT SELECT ON {schema}.schema_migrations TO {role};
-- snapshot reads, mark sent, set aside what the broker did not take (INSERT, UPDATE),
-- publish set-aside rows (claim, mark sent), retention.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.messages TO {role};
-- move messages to the dead letters (also a trigger, run with the relay's rights).
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.dead_letters TO {role};
-- leadership lease and the published position of the slot.
GRANT SELECT, INSERT, UPDATE ON {schema}.cdc_state TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.relays TO {role};
-- hold keys behind a failed or dead-lettered message and release them, as in polling.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.key_holds TO {role};
-- a CDC relay owns no buckets, but lets go of any on shutdown like a polling one.
GRANT SELECT, UPDATE ON {schema}.bucket_leases TO {role};
-- the leader moves delayed messages into the outbox when due; status counts them.
GRANT SELECT, UPDATE, DELETE ON {schema}.scheduled TO {role};
GRANT EXECUTE ON FUNCTION {schema}.cdc_xid_precedes(xid, xid8) TO {role};
-- The outbox's CHECK on headers calls it on every INSERT and UPDATE of a row.
GRANT EXECUTE ON FUNCTION {schema}.valid_headers(jsonb) TO {role};
-- Creating a publication needs ownership of the table, which the relay role should not
-- have: create it here, as the owner. The relay finds it and never changes it.
DO $publication$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = {publication_name}) THEN
    CREATE PUBLICATION {publication} FOR TABLE {schema}.messages WITH (publish = 'insert');
  END IF;
END $publication$;

-- name: cdc_superuser
-- Slots and streaming (CREATE_REPLICATION_SLOT, START_REPLICATION, dropping a lost slot).
DO $replication$ BEGIN
  IF NOT (SELECT rolreplication FROM pg_catalog.pg_roles WHERE rolname = {role_name}) THEN
    ALTER ROLE {role} WITH REPLICATION;
  END IF;
END $replication$;

-- name: inbox
GRANT SELECT ON {schema}.inbox_migrations TO {role};
-- claim a message id, store and replay results, purge old entries.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.inbox TO {role};

-- name: producer
-- A writer sets what describes its message and nothing of the relay's bookkeeping (seq,
-- id, created_at, attempts, last_error, sent_at, parked_at): with INSERT on the whole
-- table it could take a range of seq with OVERRIDING SYSTEM VALUE (every later insert
-- then fails on the primary key until the sequence passes it) or insert rows as sent,
-- parked or out of attempts. The functions and relay.enqueue() set these columns only,
-- and read back the new id. Scripts of earlier versions granted INSERT on the whole
-- table, so it is taken back first (a role that also relays: grant it its relay mode
-- after this).
REVOKE INSERT ON {schema}.messages FROM {role};
GRANT INSERT (topic, key, payload, payload_bytes, headers, content_type, available_at),
      SELECT (id)
  ON {schema}.messages TO {role};
GRANT EXECUTE ON FUNCTION
  {schema}.uuid_v7(),
  {schema}.enqueue(text, text, jsonb, jsonb, timestamptz),
  {schema}.enqueue(text, text, text, jsonb, timestamptz),
  {schema}.enqueue_binary(text, text, bytea, jsonb, text, timestamptz),
  {schema}.enqueue_many(text[], text[], text[], jsonb[], timestamptz[]),
  {schema}.emit(text, text, jsonb, jsonb, timestamptz),
  {schema}.emit(text, text, text, jsonb, timestamptz),
  {schema}.emit_binary(text, text, bytea, jsonb, text, timestamptz),
  {schema}.cdc_emit(uuid, text, text, jsonb, text, text, bytea),
  {schema}.cdc_message_prefix(),
  {schema}.valid_headers(jsonb)
  TO {role};
