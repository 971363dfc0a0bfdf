-- outbox-relay migration 8: delayed delivery. A message whose available_at is later than
-- its created_at waits in <schema>.scheduled and joins the outbox when it is due.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- Why a table of its own rather than a row of messages the claim skips:
-- - Order. A delayed message takes its place in its key's order when it becomes due: a
--   relay moves it into messages then, and the move gives it a new seq, after every
--   message committed before and before every one committed after. Left in place it
--   would keep its seq from the insert, and a relay that is behind (a held key, a
--   broker outage) would publish it before messages of its key committed while it
--   waited.
-- - Cost. The claim reads the pending index in seq order; a day of scheduled reminders
--   at the front of it would be read past on every claim.
-- - CDC. The stream skips a delayed insert (the trigger marks it sent, and the stream
--   never publishes a row inserted as sent) and confirms the slot past it at once: the
--   message is durable here, the slot retains no WAL for it however long it waits, and
--   its move into messages is a new insert that the stream publishes in commit order
--   like any other.
-- Only the relay's promote_due (relay/sql/queries.sql) deletes from this table, in the
-- transaction that inserts the message into messages.
CREATE TABLE {schema}.scheduled (
  seq           bigint PRIMARY KEY,  -- the seq of the insert: breaks ties between equal due times
  id            uuid NOT NULL UNIQUE,
  topic         text NOT NULL,
  key           text,
  payload       json,
  payload_bytes bytea,
  content_type  text NOT NULL,
  headers       jsonb NOT NULL,
  created_at    timestamptz NOT NULL,
  -- 'infinity' would never be due, and neither status nor the stream could read it.
  available_at  timestamptz NOT NULL CONSTRAINT scheduled_due_is_finite
                CHECK (isfinite(available_at))
);

CREATE INDEX scheduled_due ON {schema}.scheduled (available_at, seq);

-- Two triggers move a delayed row: before the insert, a copy goes into the scheduled
-- table and the row is marked sent (sent_at = now()), which is what the CDC stream sees
-- of it: no relay publishes a row inserted as sent, so the stream tests nothing more
-- per row; after the insert, the row is deleted, so INSERT ... RETURNING (and
-- enqueue()) still returns the new id. Nobody else ever sees the marked row.
-- created_at defaults to the transaction's start, as available_at does: a row written
-- without a delay is never moved. Only inserts: a failed keyless message's retry time
-- (an UPDATE of available_at) stays in place. If the triggers are off (say under
-- session_replication_role = replica) the row stays in messages: polling publishes it
-- when due in its insert's place, CDC at commit; early, never lost.
-- SECURITY DEFINER: a writer needs no privilege on the scheduled table, nor DELETE on
-- messages; the search path is pinned for the same reason.
CREATE FUNCTION {schema}.schedule_delayed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO {schema}.scheduled
    (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
     available_at)
  VALUES (NEW.seq, NEW.id, NEW.topic, NEW.key, NEW.payload, NEW.payload_bytes,
          NEW.content_type, NEW.headers, NEW.created_at, NEW.available_at);
  NEW.sent_at := now();
  RETURN NEW;
END
$$;

CREATE FUNCTION {schema}.remove_scheduled_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  DELETE FROM {schema}.messages m
  WHERE m.seq = NEW.seq
    AND EXISTS (SELECT FROM {schema}.scheduled s WHERE s.seq = NEW.seq);
  RETURN NULL;
END
$$;

CREATE TRIGGER messages_schedule_delayed
  BEFORE INSERT ON {schema}.messages
  FOR EACH ROW
  WHEN (NEW.available_at > NEW.created_at AND NEW.sent_at IS NULL AND NEW.parked_at IS NULL)
  EXECUTE FUNCTION {schema}.schedule_delayed();

-- The row marked above (a row inserted as sent and available later than created is
-- nothing else: the check on the scheduled table makes sure).
CREATE TRIGGER messages_scheduled_leave
  AFTER INSERT ON {schema}.messages
  FOR EACH ROW
  WHEN (NEW.sent_at IS NOT NULL AND NEW.available_at > NEW.created_at
        AND NEW.parked_at IS NULL)
  EXECUTE FUNCTION {schema}.remove_scheduled_row();

-- Rows written with a delay before this migration move too (never-attempted ones only:
-- a failed keyless message waits out its retry in place). A CDC relay of an earlier
-- version published them at commit already; they go out once more when due.
WITH moved AS (
  DELETE FROM {schema}.messages
  WHERE available_at > created_at AND sent_at IS NULL AND parked_at IS NULL
    AND attempts = 0
  RETURNING seq, id, topic, key, payload, payload_bytes, content_type, headers,
            created_at, available_at
)
INSERT INTO {schema}.scheduled
  (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
   available_at)
SELECT * FROM moved;
