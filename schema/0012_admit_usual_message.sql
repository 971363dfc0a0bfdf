-- outbox-relay migration 12: the usual message through admit_message() in one
-- expression, so a one-row transaction costs the writer less.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- PL/pgSQL builds the executor state of each expression in a function again in every
-- transaction that runs it (that state lives as long as the transaction).
-- admit_message() evaluated seven for a usual message (the topic, the payloads, the
-- headers, the bucket, then whether the row was an insert due now, delayed or parked),
-- so a service writing one message per transaction paid for building seven. A usual
-- message (due now, not parked, no headers, its checks passing) now takes one test and
-- its bucket; every other row goes the way it went before, unchanged. A row that fails
-- the test (a NULL in any of its columns included: the test is then not true) is
-- checked, refused or moved exactly as by migration 11. benchmarks/README.md has the
-- figures.

CREATE OR REPLACE FUNCTION {schema}.admit_message() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  -- The usual message, in one expression: its checks pass, it is due now and not parked,
  -- and it has no headers to check. It needs only its bucket. The rest of the function
  -- handles every other row, as before.
  IF NEW.parked_at IS NULL
     AND NEW.available_at OPERATOR(pg_catalog.<=) NEW.created_at
     AND NEW.headers OPERATOR(pg_catalog.=) '{{}}'::pg_catalog.jsonb
     AND NEW.topic OPERATOR(pg_catalog.<>) ''
     AND pg_catalog.length(NEW.topic) OPERATOR(pg_catalog.<=) 249
     AND (NEW.payload IS NULL OR NEW.payload_bytes IS NULL) THEN
    NEW.bucket := (pg_catalog.hashtext(COALESCE(NEW.key, NEW.id::pg_catalog.text))
                   OPERATOR(pg_catalog.&) 255)::pg_catalog.int2;
    RETURN NEW;
  END IF;
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
