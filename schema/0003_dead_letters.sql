-- outbox-relay migration 3: dead letters.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.

-- A message the broker refused for good, or that used up its attempts, leaves the outbox
-- for this table, with its error. It keeps its seq: `outbox-relay dead-letters retry`
-- puts it back in its original place in the key's order. With --on-poison block (the
-- default) its key stays held in key_holds (held_until = 'infinity') until then.
CREATE TABLE {schema}.dead_letters (
  seq           bigint PRIMARY KEY,
  id            uuid NOT NULL UNIQUE,
  topic         text NOT NULL,
  key           text,
  payload       jsonb,
  payload_bytes bytea,
  content_type  text NOT NULL,
  headers       jsonb NOT NULL,
  created_at    timestamptz NOT NULL,
  attempts      integer NOT NULL,
  last_error    text,
  reason        text NOT NULL CHECK (reason IN ('permanent', 'max_attempts', 'parked')),
  dead_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_key ON {schema}.dead_letters (key);
CREATE INDEX dead_letters_topic ON {schema}.dead_letters (topic, dead_at);

-- Rows parked in place (parked_at set: relays of an earlier version during a rolling
-- upgrade, and the CDC parker) move to the dead letters too, so there is one place to
-- look. The row's key hold, if any, stays as it is.
CREATE FUNCTION {schema}.move_parked_to_dead_letters() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO {schema}.dead_letters AS d
    (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
     attempts, last_error, reason, dead_at)
  VALUES (NEW.seq, NEW.id, NEW.topic, NEW.key, NEW.payload, NEW.payload_bytes,
          NEW.content_type, NEW.headers, NEW.created_at, NEW.attempts, NEW.last_error,
          'parked', NEW.parked_at)
  ON CONFLICT (id) DO UPDATE
  SET last_error = excluded.last_error, attempts = excluded.attempts, dead_at = now();
  DELETE FROM {schema}.messages WHERE seq = NEW.seq;
  RETURN NULL;
END
$$;

CREATE TRIGGER messages_parked_to_dead_letters
  AFTER INSERT OR UPDATE OF parked_at ON {schema}.messages
  FOR EACH ROW WHEN (NEW.parked_at IS NOT NULL AND NEW.sent_at IS NULL)
  EXECUTE FUNCTION {schema}.move_parked_to_dead_letters();

WITH moved AS (
  DELETE FROM {schema}.messages
  WHERE parked_at IS NOT NULL AND sent_at IS NULL
  RETURNING *
)
INSERT INTO {schema}.dead_letters
  (seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
   attempts, last_error, reason, dead_at)
SELECT seq, id, topic, key, payload, payload_bytes, content_type, headers, created_at,
       attempts, last_error, 'parked', parked_at
FROM moved;

-- Nothing stays parked in place any more.
DROP INDEX {schema}.messages_parked;
