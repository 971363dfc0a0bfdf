-- outbox-relay migration 2: CDC mode (logical decoding of the WAL instead of polling).
-- {schema} is replaced by the quoted schema name; literal braces are doubled.

-- One row per replication slot: who streams it (the leader's lease, next to a
-- session-level advisory lock) and how far it is published. confirmed_lsn is written
-- before the relay reports it to the server, so the slot can never be ahead of it unless
-- someone else moved or recreated the slot. covered_xmin: every transaction with a lower
-- id was published (or aborted); it tells which outbox rows a lost slot may have missed.
CREATE TABLE {schema}.cdc_state (
  slot_name         text PRIMARY KEY,
  leader_id         uuid,
  leader_name       text,
  leader_pid        integer,
  lease_expires_at  timestamptz NOT NULL DEFAULT '-infinity',
  confirmed_lsn     pg_lsn,
  covered_xmin      xid8,
  candidate_lsn     pg_lsn,
  candidate_xmin    xid8,
  snapshot_done     boolean NOT NULL DEFAULT false,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

-- True when transaction id x (a row's xmin) is older than the 64-bit watermark, compared
-- modulo 2^32 like PostgreSQL's TransactionIdPrecedes: valid for rows younger than two
-- billion transactions, which retention deletes long before. NULL watermark: unknown.
CREATE FUNCTION {schema}.cdc_xid_precedes(x xid, watermark xid8) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT x::text::bigint < 3
      OR (x::text::bigint - (watermark::text::bigint & 4294967295) + 4294967296)
         % 4294967296 >= 2147483648
$$;

-- The prefix of this outbox's logical messages: 'outbox-relay:<schema>'. Looked up from
-- the catalog rather than spelled out, so the schema name never sits in a string literal.
CREATE FUNCTION {schema}.cdc_message_prefix() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT 'outbox-relay:' || t.typnamespace::regnamespace::text
  FROM pg_type t WHERE t.oid = pg_typeof(NULL::{schema}.messages)::oid
$$;

-- Write one event straight into the WAL (no table row) as a transactional logical
-- message: it is decoded only if the transaction commits, in commit order. The content
-- is a one-line JSON header, a newline, then the body bytes.
CREATE FUNCTION {schema}.cdc_emit(
  message_id uuid, topic text, key text, headers jsonb, content_type text,
  body_kind text, body bytea
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF topic IS NULL OR topic = '' OR length(topic) > 249 THEN
    RAISE EXCEPTION 'an outbox topic must have 1 to 249 characters'
      USING ERRCODE = 'check_violation';
  END IF;
  IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
    RAISE EXCEPTION 'outbox headers must be a JSON object' USING ERRCODE = 'check_violation';
  END IF;
  PERFORM pg_logical_emit_message(
    true,
    {schema}.cdc_message_prefix(),
    convert_to(jsonb_build_object(
      'v', 1, 'id', message_id, 'topic', topic, 'key', key,
      'headers', COALESCE(headers, '{{}}'), 'content_type', content_type, 'body', body_kind
    )::text, 'UTF8') || '\x0a'::bytea || COALESCE(body, ''::bytea));
  RETURN message_id;
END
$$;

CREATE FUNCTION {schema}.emit(
  topic text, key text, payload jsonb, headers jsonb DEFAULT '{{}}'
) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  SELECT {schema}.cdc_emit(
    {schema}.uuid_v7(), topic, key, headers, 'application/json',
    CASE WHEN payload IS NULL THEN 'null' ELSE 'json' END,
    convert_to(payload::text, 'UTF8'))
$$;

CREATE FUNCTION {schema}.emit_binary(
  topic text, key text, payload bytea, headers jsonb DEFAULT '{{}}',
  content_type text DEFAULT 'application/octet-stream'
) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  SELECT {schema}.cdc_emit(
    {schema}.uuid_v7(), topic, key, headers, content_type,
    CASE WHEN payload IS NULL THEN 'null' ELSE 'bytes' END, payload)
$$;
