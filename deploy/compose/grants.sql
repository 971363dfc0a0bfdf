-- Least privileges of the demo roles, exactly as the relay prints them (a test keeps this
-- file in step). Regenerate with:
--   for s in outbox outbox_amqp; do outbox-relay migrate --schema $s --print-grants relay;
--     outbox-relay migrate --schema $s --print-grants writer --mode producer; done

-- Privileges of a role that runs `outbox-relay run` in polling mode and `outbox-relay status`, on outbox schema 'outbox'.
-- Run as the schema owner after `outbox-relay migrate`. The role itself is yours:
--   CREATE ROLE <role> LOGIN PASSWORD '...';  (no SUPERUSER, CREATEDB or CREATEROLE)
BEGIN;
-- CONNECT is PUBLIC's by default: then there is nothing to grant (and a schema owner who
-- does not own the database would only get the warning "no privileges were granted").
-- Where PUBLIC's was revoked, only the database owner (or a superuser) can grant it.
DO $grant$ BEGIN
  IF pg_catalog.has_database_privilege('relay', current_database(), 'CONNECT') THEN
    NULL;
  ELSIF pg_catalog.has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), 'relay');
  ELSE
    RAISE WARNING 'role % may not connect to database %, and only its owner can allow it',
      'relay', current_database()
      USING HINT = format('As the owner of database %I run: GRANT CONNECT ON DATABASE %I TO %I',
                          current_database(), current_database(), 'relay');
  END IF;
END $grant$;
GRANT USAGE ON SCHEMA "outbox" TO "relay";
-- require_schema reads the version; status reads everything below.
GRANT SELECT ON "outbox".schema_migrations TO "relay";
-- claim (SELECT ... FOR UPDATE), mark sent, record failures, delete on ack, retention;
-- INSERT for `outbox-relay dead-letters retry`, which puts a message back.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox".messages TO "relay";
-- move refused messages to the dead letters; `outbox-relay dead-letters` reads and drops.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox".dead_letters TO "relay";
-- hold keys behind a failed message and release them.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox".key_holds TO "relay";
-- heartbeat, prune dead relays, forget itself on shutdown.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox".relays TO "relay";
-- lease, renew and release buckets (the 256 rows exist; they are never inserted).
GRANT SELECT, UPDATE ON "outbox".bucket_leases TO "relay";
-- `outbox-relay status` shows the CDC slot's state, if there is one.
GRANT SELECT ON "outbox".cdc_state TO "relay";
-- move delayed messages into the outbox when due (SELECT ... FOR UPDATE, DELETE), status.
GRANT SELECT, UPDATE, DELETE ON "outbox".scheduled TO "relay";
-- The outbox's CHECK on headers calls it on every INSERT and UPDATE of a row.
GRANT EXECUTE ON FUNCTION "outbox".valid_headers(jsonb) TO "relay";
COMMIT;
-- Privileges of a role that writes events with enqueue()/emit() in the application's transactions, on outbox schema 'outbox'.
-- Run as the schema owner after `outbox-relay migrate`. The role itself is yours:
--   CREATE ROLE <role> LOGIN PASSWORD '...';  (no SUPERUSER, CREATEDB or CREATEROLE)
BEGIN;
-- CONNECT is PUBLIC's by default: then there is nothing to grant (and a schema owner who
-- does not own the database would only get the warning "no privileges were granted").
-- Where PUBLIC's was revoked, only the database owner (or a superuser) can grant it.
DO $grant$ BEGIN
  IF pg_catalog.has_database_privilege('writer', current_database(), 'CONNECT') THEN
    NULL;
  ELSIF pg_catalog.has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), 'writer');
  ELSE
    RAISE WARNING 'role % may not connect to database %, and only its owner can allow it',
      'writer', current_database()
      USING HINT = format('As the owner of database %I run: GRANT CONNECT ON DATABASE %I TO %I',
                          current_database(), current_database(), 'writer');
  END IF;
END $grant$;
GRANT USAGE ON SCHEMA "outbox" TO "writer";
-- A writer sets what describes its message and nothing of the relay's bookkeeping (seq,
-- id, created_at, attempts, last_error, sent_at, parked_at): with INSERT on the whole
-- table it could take a range of seq with OVERRIDING SYSTEM VALUE (every later insert
-- then fails on the primary key until the sequence passes it) or insert rows as sent,
-- parked or out of attempts. The functions and relay.enqueue() set these columns only,
-- and read back the new id. Scripts of earlier versions granted INSERT on the whole
-- table, so it is taken back first (a role that also relays: grant it its relay mode
-- after this).
REVOKE INSERT ON "outbox".messages FROM "writer";
GRANT INSERT (topic, key, payload, payload_bytes, headers, content_type, available_at),
      SELECT (id)
  ON "outbox".messages TO "writer";
GRANT EXECUTE ON FUNCTION
  "outbox".uuid_v7(),
  "outbox".enqueue(text, text, jsonb, jsonb, timestamptz),
  "outbox".enqueue(text, text, text, jsonb, timestamptz),
  "outbox".enqueue_binary(text, text, bytea, jsonb, text, timestamptz),
  "outbox".enqueue_many(text[], text[], text[], jsonb[], timestamptz[]),
  "outbox".emit(text, text, jsonb, jsonb, timestamptz),
  "outbox".emit(text, text, text, jsonb, timestamptz),
  "outbox".emit_binary(text, text, bytea, jsonb, text, timestamptz),
  "outbox".cdc_emit(uuid, text, text, jsonb, text, text, bytea),
  "outbox".cdc_message_prefix(),
  "outbox".valid_headers(jsonb)
  TO "writer";
COMMIT;
-- Privileges of a role that runs `outbox-relay run` in polling mode and `outbox-relay status`, on outbox schema 'outbox_amqp'.
-- Run as the schema owner after `outbox-relay migrate`. The role itself is yours:
--   CREATE ROLE <role> LOGIN PASSWORD '...';  (no SUPERUSER, CREATEDB or CREATEROLE)
BEGIN;
-- CONNECT is PUBLIC's by default: then there is nothing to grant (and a schema owner who
-- does not own the database would only get the warning "no privileges were granted").
-- Where PUBLIC's was revoked, only the database owner (or a superuser) can grant it.
DO $grant$ BEGIN
  IF pg_catalog.has_database_privilege('relay', current_database(), 'CONNECT') THEN
    NULL;
  ELSIF pg_catalog.has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), 'relay');
  ELSE
    RAISE WARNING 'role % may not connect to database %, and only its owner can allow it',
      'relay', current_database()
      USING HINT = format('As the owner of database %I run: GRANT CONNECT ON DATABASE %I TO %I',
                          current_database(), current_database(), 'relay');
  END IF;
END $grant$;
GRANT USAGE ON SCHEMA "outbox_amqp" TO "relay";
-- require_schema reads the version; status reads everything below.
GRANT SELECT ON "outbox_amqp".schema_migrations TO "relay";
-- claim (SELECT ... FOR UPDATE), mark sent, record failures, delete on ack, retention;
-- INSERT for `outbox-relay dead-letters retry`, which puts a message back.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox_amqp".messages TO "relay";
-- move refused messages to the dead letters; `outbox-relay dead-letters` reads and drops.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox_amqp".dead_letters TO "relay";
-- hold keys behind a failed message and release them.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox_amqp".key_holds TO "relay";
-- heartbeat, prune dead relays, forget itself on shutdown.
GRANT SELECT, INSERT, UPDATE, DELETE ON "outbox_amqp".relays TO "relay";
-- lease, renew and release buckets (the 256 rows exist; they are never inserted).
GRANT SELECT, UPDATE ON "outbox_amqp".bucket_leases TO "relay";
-- `outbox-relay status` shows the CDC slot's state, if there is one.
GRANT SELECT ON "outbox_amqp".cdc_state TO "relay";
-- move delayed messages into the outbox when due (SELECT ... FOR UPDATE, DELETE), status.
GRANT SELECT, UPDATE, DELETE ON "outbox_amqp".scheduled TO "relay";
-- The outbox's CHECK on headers calls it on every INSERT and UPDATE of a row.
GRANT EXECUTE ON FUNCTION "outbox_amqp".valid_headers(jsonb) TO "relay";
COMMIT;
-- Privileges of a role that writes events with enqueue()/emit() in the application's transactions, on outbox schema 'outbox_amqp'.
-- Run as the schema owner after `outbox-relay migrate`. The role itself is yours:
--   CREATE ROLE <role> LOGIN PASSWORD '...';  (no SUPERUSER, CREATEDB or CREATEROLE)
BEGIN;
-- CONNECT is PUBLIC's by default: then there is nothing to grant (and a schema owner who
-- does not own the database would only get the warning "no privileges were granted").
-- Where PUBLIC's was revoked, only the database owner (or a superuser) can grant it.
DO $grant$ BEGIN
  IF pg_catalog.has_database_privilege('writer', current_database(), 'CONNECT') THEN
    NULL;
  ELSIF pg_catalog.has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), 'writer');
  ELSE
    RAISE WARNING 'role % may not connect to database %, and only its owner can allow it',
      'writer', current_database()
      USING HINT = format('As the owner of database %I run: GRANT CONNECT ON DATABASE %I TO %I',
                          current_database(), current_database(), 'writer');
  END IF;
END $grant$;
GRANT USAGE ON SCHEMA "outbox_amqp" TO "writer";
-- A writer sets what describes its message and nothing of the relay's bookkeeping (seq,
-- id, created_at, attempts, last_error, sent_at, parked_at): with INSERT on the whole
-- table it could take a range of seq with OVERRIDING SYSTEM VALUE (every later insert
-- then fails on the primary key until the sequence passes it) or insert rows as sent,
-- parked or out of attempts. The functions and relay.enqueue() set these columns only,
-- and read back the new id. Scripts of earlier versions granted INSERT on the whole
-- table, so it is taken back first (a role that also relays: grant it its relay mode
-- after this).
REVOKE INSERT ON "outbox_amqp".messages FROM "writer";
GRANT INSERT (topic, key, payload, payload_bytes, headers, content_type, available_at),
      SELECT (id)
  ON "outbox_amqp".messages TO "writer";
GRANT EXECUTE ON FUNCTION
  "outbox_amqp".uuid_v7(),
  "outbox_amqp".enqueue(text, text, jsonb, jsonb, timestamptz),
  "outbox_amqp".enqueue(text, text, text, jsonb, timestamptz),
  "outbox_amqp".enqueue_binary(text, text, bytea, jsonb, text, timestamptz),
  "outbox_amqp".enqueue_many(text[], text[], text[], jsonb[], timestamptz[]),
  "outbox_amqp".emit(text, text, jsonb, jsonb, timestamptz),
  "outbox_amqp".emit(text, text, text, jsonb, timestamptz),
  "outbox_amqp".emit_binary(text, text, bytea, jsonb, text, timestamptz),
  "outbox_amqp".cdc_emit(uuid, text, text, jsonb, text, text, bytea),
  "outbox_amqp".cdc_message_prefix(),
  "outbox_amqp".valid_headers(jsonb)
  TO "writer";
COMMIT;
