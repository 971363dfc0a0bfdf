-- outbox-relay migration 11: no row trigger after an insert, so a single-row INSERT
-- costs the writer less.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- Migration 10 left one AFTER INSERT row trigger, messages_move_inserted, for the two
-- kinds of row that do not stay in messages: a delayed message's stand-in (inserted
-- marked sent, its copy waiting in the scheduled table) and a row inserted already
-- parked (the CDC parker's). Its WHEN is false for every usual row, but PostgreSQL
-- prepares a row trigger's WHEN again for every statement and queues an event per row,
-- so each single-row INSERT paid for it (benchmarks/README.md has the figures). Instead:
-- - a parked row goes to the dead letters from admit_message(), before the insert, and
--   is not inserted at all (unless its id is already in messages: then the parker's ON
--   CONFLICT parks that row in place, and the update trigger moves it, as before);
-- - a stand-in is still inserted, so INSERT ... RETURNING (and enqueue()) returns its
--   id, and admit_message() raises a transaction-local flag; the statement trigger that
--   already ran after every INSERT deletes this transaction's stand-ins when the flag is
--   up, then lowers it. Every statement reads the flag; only one that inserted a delayed
--   message pays for the delete.
-- What a writer sees does not change: the stand-in lives until the end of the statement
-- that inserted it, as before, and the CDC stream skips it as before. An INSERT of a
-- parked row now counts no row inserted and writes none to the WAL (the relay's parker
-- reads neither). The flag is a custom setting named after the table's oid, so two
-- outboxes in one transaction (even one writing the other from a trigger) keep theirs
-- apart.

CREATE OR REPLACE FUNCTION {schema}.admit_message() RETURNS trigger
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
  IF TG_OP OPERATOR(pg_catalog.<>) 'INSERT' OR NEW.sent_at IS NOT NULL THEN
    RETURN NEW;
  END IF;
  -- A delayed message (migration 8): a copy waits in the scheduled table, and the row is
  -- marked sent, which is all the CDC stream sees of it; notify_relays() deletes it at
  -- the end of the statement, so INSERT ... RETURNING still returns its id.
  IF NEW.available_at OPERATOR(pg_catalog.>) NEW.created_at AND NEW.parked_at IS NULL THEN
    INSERT INTO {schema}.scheduled
      (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
       available_at)
    VALUES (NEW.seq, NEW.id, NEW.topic, NEW.key, NEW.payload, NEW.payload_bytes,
            NEW.content_type, NEW.headers, NEW.created_at, NEW.available_at);
    NEW.sent_at := pg_catalog.now();
    PERFORM pg_catalog.set_config(
      'outbox_relay.stand_ins_' OPERATOR(pg_catalog.||) TG_RELID::pg_catalog.text, 'on', true);
  ELSIF NEW.parked_at IS NOT NULL THEN
    PERFORM FROM {schema}.messages m WHERE m.id OPERATOR(pg_catalog.=) NEW.id;
    IF NOT FOUND THEN
      PERFORM {schema}.bury_parked(NEW);
      RETURN NULL;
    END IF;
  END IF;
  RETURN NEW;
END
$$;

-- A parked row into the dead letters (after an insert that parked it in place, or
-- instead of an insert of a parked row). Not SECURITY DEFINER: the triggers that call it
-- already run as the owner, and PUBLIC may execute a function by default, so anyone
-- else who calls it does so with their own rights (a producer has none on dead_letters).
CREATE FUNCTION {schema}.bury_parked(m {schema}.messages) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
  INSERT INTO {schema}.dead_letters AS d
    (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
     attempts, last_error, reason, dead_at)
  VALUES (m.seq, m.id, m.topic, m.key, m.payload, m.payload_bytes, m.content_type,
          m.headers, m.created_at, m.attempts, m.last_error, 'parked', m.parked_at)
  ON CONFLICT (id) DO UPDATE
  SET last_error = excluded.last_error, attempts = excluded.attempts, dead_at = now();
$$;

-- After an UPDATE that parks a row (the WHEN of messages_parked_to_dead_letters).
CREATE OR REPLACE FUNCTION {schema}.move_written_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  PERFORM {schema}.bury_parked(NEW);
  DELETE FROM {schema}.messages m WHERE m.seq OPERATOR(pg_catalog.=) NEW.seq;
  RETURN NULL;
END
$$;

-- Once per statement, as before: this transaction's stand-ins first, when there are
-- any, then the wake-up (migration 9 says why every name is qualified here).
CREATE OR REPLACE FUNCTION {schema}.notify_relays() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  IF pg_catalog.current_setting(
       'outbox_relay.stand_ins_' OPERATOR(pg_catalog.||) TG_RELID::pg_catalog.text, true)
     OPERATOR(pg_catalog.=) 'on' THEN
    -- This transaction's stand-ins: marked sent at now(), the transaction's start (the
    -- relay marks rows sent in transactions of its own), each with its copy in the
    -- scheduled table under the same seq. The sent_at index finds them.
    DELETE FROM {schema}.messages m
    WHERE m.sent_at OPERATOR(pg_catalog.=) pg_catalog.now()
      AND EXISTS (SELECT FROM {schema}.scheduled s
                  WHERE s.seq OPERATOR(pg_catalog.=) m.seq);
    PERFORM pg_catalog.set_config(
      'outbox_relay.stand_ins_' OPERATOR(pg_catalog.||) TG_RELID::pg_catalog.text, '', true);
  END IF;
  PERFORM FROM {schema}.relays
  WHERE listening AND mode OPERATOR(pg_catalog.=) 'poll'
    AND expires_at OPERATOR(pg_catalog.>) pg_catalog.now()
  LIMIT 1;
  IF FOUND THEN
    PERFORM pg_catalog.pg_notify(TG_TABLE_SCHEMA OPERATOR(pg_catalog.||) '.messages', '');
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER messages_move_inserted ON {schema}.messages;
