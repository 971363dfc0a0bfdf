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
-- - CDC. The stream skips a delayed insert (the same test on the same row: available_at
--   > created_at), and confirms the slot past it at once: the message is durable here,
--   the slot retains no WAL for it however long it waits, and its move into messages is
--   a new insert that the stream publishes in commit order like any other.
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
  available_at  timestamptz NOT NULL
);

CREATE INDEX scheduled_due ON {schema}.scheduled (available_at, seq);

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
  DELETE FROM {schema}.messages WHERE seq = NEW.seq;
  RETURN NULL;
END
$$;

-- An AFTER trigger, so INSERT ... RETURNING (and enqueue()) still returns the new id.
-- created_at defaults to the transaction's start, as available_at does: a row written
-- without a delay is never moved. Only inserts: a failed keyless message's retry time
-- (an UPDATE of available_at) stays in place.
CREATE TRIGGER messages_schedule_delayed
  AFTER INSERT ON {schema}.messages
  FOR EACH ROW
  WHEN (NEW.available_at > NEW.created_at AND NEW.sent_at IS NULL AND NEW.parked_at IS NULL)
  EXECUTE FUNCTION {schema}.schedule_delayed();

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
