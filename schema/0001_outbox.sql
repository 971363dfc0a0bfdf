-- outbox-relay migration 1: the outbox, its enqueue functions, bucket leases.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.

CREATE FUNCTION {schema}.uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  -- RFC 9562 version 7: 48-bit Unix milliseconds, then random bits, so ids sort by time.
  SELECT encode(
    set_bit(set_bit(set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1), 54, 1), 55, 0),
    'hex')::uuid
$$;

CREATE TABLE {schema}.messages (
  seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id            uuid NOT NULL DEFAULT {schema}.uuid_v7(),
  topic         text NOT NULL CHECK (topic <> '' AND length(topic) <= 249),
  key           text,
  payload       jsonb,
  payload_bytes bytea,
  content_type  text NOT NULL DEFAULT 'application/json',
  headers       jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(headers) = 'object'),
  created_at    timestamptz NOT NULL DEFAULT now(),
  available_at  timestamptz NOT NULL DEFAULT now(),
  attempts      integer NOT NULL DEFAULT 0,
  last_error    text,
  sent_at       timestamptz,
  parked_at     timestamptz,
  -- Keys hash into 256 buckets; relays lease buckets, so one key is only ever drained by
  -- one relay at a time. A NULL key has no order, so it spreads by message id.
  bucket        smallint NOT NULL
                GENERATED ALWAYS AS ((hashtext(COALESCE(key, id::text)) & 255)::smallint) STORED,
  CONSTRAINT messages_one_payload CHECK (payload IS NULL OR payload_bytes IS NULL)
) WITH (fillfactor = 90);

CREATE UNIQUE INDEX messages_id_key ON {schema}.messages (id);
-- The relay's claim scans pending rows in sequence order; this index holds only them.
CREATE INDEX messages_pending ON {schema}.messages (seq)
  WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX messages_parked ON {schema}.messages (seq)
  WHERE parked_at IS NOT NULL AND sent_at IS NULL;
-- Retention deletes the oldest sent rows in small batches.
CREATE INDEX messages_sent_at ON {schema}.messages (sent_at) WHERE sent_at IS NOT NULL;

ALTER TABLE {schema}.messages SET (
  autovacuum_vacuum_scale_factor = 0.01,
  autovacuum_vacuum_insert_scale_factor = 0.01,
  autovacuum_analyze_scale_factor = 0.02
);

-- A key whose oldest pending message failed is held until its retry time (or, once a
-- message is parked, until a person retries or drops it), so later messages of the key
-- cannot overtake it. Usually empty.
CREATE TABLE {schema}.key_holds (
  key         text PRIMARY KEY,
  held_until  timestamptz NOT NULL,
  seq         bigint NOT NULL,
  reason      text
);

CREATE TABLE {schema}.relays (
  relay_id      uuid PRIMARY KEY,
  name          text NOT NULL,
  mode          text NOT NULL,
  started_at    timestamptz NOT NULL DEFAULT now(),
  heartbeat_at  timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz NOT NULL,
  published     bigint NOT NULL DEFAULT 0
);

CREATE TABLE {schema}.bucket_leases (
  bucket      smallint PRIMARY KEY CHECK (bucket BETWEEN 0 AND 255),
  relay_id    uuid,
  expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO {schema}.bucket_leases (bucket) SELECT generate_series(0, 255);

CREATE FUNCTION {schema}.enqueue(
  topic text, key text, payload jsonb, headers jsonb DEFAULT '{{}}'
) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  INSERT INTO {schema}.messages (topic, key, payload, headers)
  VALUES (topic, key, payload, COALESCE(headers, '{{}}'))
  RETURNING id
$$;

CREATE FUNCTION {schema}.enqueue_binary(
  topic text, key text, payload bytea, headers jsonb DEFAULT '{{}}',
  content_type text DEFAULT 'application/octet-stream'
) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  INSERT INTO {schema}.messages (topic, key, payload_bytes, headers, content_type)
  VALUES (topic, key, payload, COALESCE(headers, '{{}}'), content_type)
  RETURNING id
$$;

-- Wake relays when rows arrive. Once per statement (not per row) and NOTIFY folds
-- duplicates within a transaction, so a bulk insert sends one notification.
CREATE FUNCTION {schema}.notify_relays() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify(TG_TABLE_SCHEMA || '.messages', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER messages_notify_relays
  AFTER INSERT ON {schema}.messages
  FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_relays();
