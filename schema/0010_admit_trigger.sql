-- outbox-relay migration 10: what the table does for each new row is done by one trigger
-- function, so a single-row INSERT costs the writer less.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- PostgreSQL prepares a table's CHECK constraints, its stored generated columns and the
-- WHEN of each row trigger again for every statement: it reads each back from its stored
-- form and plans it (it keeps them per statement, not per plan). A writer that inserts
-- one row per statement, which is how most application code writes, paid for the three
-- CHECKs, the generated bucket and three WHENs once per row. A plpgsql function keeps its
-- plans for the session, so one BEFORE trigger without a WHEN now does all of that: it
-- checks the row, computes its bucket and moves a delayed message to the scheduled
-- table. A single-row INSERT costs the server ~14 us less (~42 -> ~28 us a row,
-- benchmarks/README.md); a bulk INSERT ... SELECT pays a trigger call per row instead
-- of evaluating the same expressions.
--
-- What a writer sees does not change: the same rows are refused, with SQLSTATE 23514
-- (check_violation) and the former constraint's name, now in a sentence that says what
-- is wrong. The checks run on INSERT (COPY too) and on an UPDATE that sets a column
-- they read; the relay's own updates set none of them. With triggers off (say under
-- session_replication_role = replica) nothing is checked and no bucket is computed, so
-- such an INSERT fails on the bucket's NOT NULL instead of landing unordered.

-- Rows written before migration 9's reserved header names are exempt from that rule (it
-- exempted them by seq in the CHECK this replaces): the last seq it exempted, kept.
DO $exempt$
DECLARE
  messages pg_catalog.regclass := (
    SELECT t.typrelid FROM pg_catalog.pg_type t
    WHERE t.oid = pg_catalog.pg_typeof(NULL::{schema}.messages)::oid);
  outbox_schema text := (
    SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = messages);
  exempt bigint := (
    SELECT pg_catalog.substring(pg_catalog.pg_get_constraintdef(c.oid), 'seq <= (\d+)')::bigint
    FROM pg_catalog.pg_constraint c
    WHERE c.conrelid = messages AND c.conname = 'messages_headers_check');
BEGIN
  EXECUTE pg_catalog.format(
    'CREATE FUNCTION %s.headers_exempt_through() RETURNS bigint LANGUAGE sql IMMUTABLE '
    'AS %L', outbox_schema, 'SELECT ' || COALESCE(exempt, 0));
END
$exempt$;

-- SECURITY DEFINER: a writer needs no privilege on the scheduled table. No search_path is
-- pinned (that would cost a configuration change in and out of every call): every name
-- and operator is qualified, so a writer's own functions and operators first in its
-- search_path cannot take part.
CREATE FUNCTION {schema}.admit_message() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  IF NEW.topic OPERATOR(pg_catalog.=) ''
     OR pg_catalog.length(NEW.topic) OPERATOR(pg_catalog.>) 249 THEN
    RAISE EXCEPTION 'an outbox topic is 1 to 249 characters long; this one has %',
      pg_catalog.length(NEW.topic)
      USING ERRCODE = 'check_violation', CONSTRAINT = 'messages_topic_check',
            SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
  END IF;
  IF NEW.payload IS NOT NULL AND NEW.payload_bytes IS NOT NULL THEN
    RAISE EXCEPTION 'a message has a JSON payload or a binary one (payload_bytes), not both'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'messages_one_payload',
            SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME;
  END IF;
  -- A parked row is the relay's (the CDC parker's headers may predate the rule).
  IF NEW.headers OPERATOR(pg_catalog.<>) '{{}}'::pg_catalog.jsonb AND NEW.parked_at IS NULL
     AND NEW.seq OPERATOR(pg_catalog.>) {schema}.headers_exempt_through() THEN
    PERFORM {schema}.valid_headers(NEW.headers);
  END IF;
  -- Keys hash into 256 buckets (relays lease buckets, so one key is only ever drained by
  -- one relay at a time); a NULL key has no order, so it spreads by message id.
  NEW.bucket := (pg_catalog.hashtext(COALESCE(NEW.key, NEW.id::pg_catalog.text))
                 OPERATOR(pg_catalog.&) 255)::pg_catalog.int2;
  -- A delayed message (migration 8): a copy waits in the scheduled table, and the row is
  -- marked sent, which is all the CDC stream sees of it; messages_move_inserted below
  -- deletes it once inserted, so INSERT ... RETURNING still returns its id.
  IF TG_OP OPERATOR(pg_catalog.=) 'INSERT'
     AND NEW.available_at OPERATOR(pg_catalog.>) NEW.created_at
     AND NEW.sent_at IS NULL AND NEW.parked_at IS NULL THEN
    INSERT INTO {schema}.scheduled
      (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
       available_at)
    VALUES (NEW.seq, NEW.id, NEW.topic, NEW.key, NEW.payload, NEW.payload_bytes,
            NEW.content_type, NEW.headers, NEW.created_at, NEW.available_at);
    NEW.sent_at := pg_catalog.now();
  END IF;
  RETURN NEW;
END
$$;

-- After an insert, the rows that do not stay: one the relay parked goes to the dead
-- letters, a delayed one leaves (its copy waits in the scheduled table). Also after an
-- UPDATE that parks a row. SECURITY DEFINER for the delayed row: a writer needs no
-- DELETE on messages.
CREATE FUNCTION {schema}.move_written_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  IF NEW.parked_at IS NOT NULL AND NEW.sent_at IS NULL THEN
    INSERT INTO {schema}.dead_letters AS d
      (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
       attempts, last_error, reason, dead_at)
    VALUES (NEW.seq, NEW.id, NEW.topic, NEW.key, NEW.payload, NEW.payload_bytes,
            NEW.content_type, NEW.headers, NEW.created_at, NEW.attempts, NEW.last_error,
            'parked', NEW.parked_at)
    ON CONFLICT (id) DO UPDATE
    SET last_error = excluded.last_error, attempts = excluded.attempts,
        dead_at = pg_catalog.now();
    DELETE FROM {schema}.messages m WHERE m.seq OPERATOR(pg_catalog.=) NEW.seq;
  ELSIF TG_OP OPERATOR(pg_catalog.=) 'INSERT' AND NEW.parked_at IS NULL
        AND NEW.available_at OPERATOR(pg_catalog.>) NEW.created_at THEN
    DELETE FROM {schema}.messages m
    WHERE m.seq OPERATOR(pg_catalog.=) NEW.seq
      AND EXISTS (SELECT FROM {schema}.scheduled s
                  WHERE s.seq OPERATOR(pg_catalog.=) NEW.seq);
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER messages_schedule_delayed ON {schema}.messages;
DROP TRIGGER messages_scheduled_leave ON {schema}.messages;
DROP TRIGGER messages_parked_to_dead_letters ON {schema}.messages;
DROP FUNCTION {schema}.schedule_delayed();
DROP FUNCTION {schema}.remove_scheduled_row();
DROP FUNCTION {schema}.move_parked_to_dead_letters();

ALTER TABLE {schema}.messages
  DROP CONSTRAINT IF EXISTS messages_topic_check,
  DROP CONSTRAINT IF EXISTS messages_one_payload,
  DROP CONSTRAINT IF EXISTS messages_headers_check,
  ALTER COLUMN bucket DROP EXPRESSION;

-- id: the bucket of a keyless message follows its id.
CREATE TRIGGER messages_admit
  BEFORE INSERT OR UPDATE OF topic, key, id, payload, payload_bytes, headers
  ON {schema}.messages
  FOR EACH ROW EXECUTE FUNCTION {schema}.admit_message();

-- The smallest WHEN that lets every usual row pass: it too is prepared per statement.
CREATE TRIGGER messages_move_inserted
  AFTER INSERT ON {schema}.messages
  FOR EACH ROW WHEN (NEW.sent_at IS NOT NULL OR NEW.parked_at IS NOT NULL)
  EXECUTE FUNCTION {schema}.move_written_row();

CREATE TRIGGER messages_parked_to_dead_letters
  AFTER UPDATE OF parked_at ON {schema}.messages
  FOR EACH ROW WHEN (NEW.parked_at IS NOT NULL AND NEW.sent_at IS NULL)
  EXECUTE FUNCTION {schema}.move_written_row();
