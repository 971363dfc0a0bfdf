-- outbox-relay migration 9: the writer's side of the outbox.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- What it does, in order: reserved header names, checked for every row written; the
-- enqueue functions in plpgsql and with deliver_at; enqueue_many(); uuid_v7() and the
-- wake-up trigger cheaper per statement; emit() with deliver_at; the functions replaced
-- are dropped last, their privileges carried over. No table is rewritten and no row is
-- read or changed: the new CHECK is added NOT VALID, and exempts the rows already there.
--
-- enqueue() was a LANGUAGE sql function: PostgreSQL keeps no plan for those, so every
-- call parsed and planned its INSERT again (the id's default, uuid_v7(), inlined and
-- planned with it), about 100 us of server time per row, four times the INSERT itself.
-- A plpgsql function keeps the plan of its INSERT for the session
-- (benchmarks/writer_cost.py; the figures are in benchmarks/README.md).

-- Header names a writer may not use: the relay sets them itself on some broker, or will
-- (relay/headers.py has the rule and the reasons; tests/unit/test_reserved_headers.py
-- holds this copy of it to that one). One rule for every connector, checked where a
-- message is written: by the table's CHECK below for any INSERT (the functions
-- included), and by emit(), whose messages never touch the table. True, or an error
-- that says what is wrong. Every name is qualified, so a writer's own operators first in
-- its search_path cannot turn the check off.
CREATE FUNCTION {schema}.valid_headers(headers jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF pg_catalog.jsonb_typeof(headers) OPERATOR(pg_catalog.<>) 'object' THEN
    RAISE EXCEPTION 'outbox headers must be a JSON object' USING ERRCODE = 'check_violation';
  END IF;
  IF headers OPERATOR(pg_catalog.@?) '$.keyvalue() ? (@.key like_regex "^(id|key|message_id|content_type|content-type)$|^(ce_|ce-|cloudevents_|cloudevents:|outbox_relay_|outbox-relay-)" flag "i")' THEN
    RAISE EXCEPTION 'the header name % is reserved: the relay sets it itself (reserved: id, '
      'key, message_id, content_type, content-type and names starting with ce_, ce-, '
      'cloudevents_, cloudevents: or outbox_relay_/outbox-relay-, in any case)',
      pg_catalog.quote_literal(pg_catalog.jsonb_path_query_first(
        headers, '$.keyvalue() ? (@.key like_regex "^(id|key|message_id|content_type|content-type)$|^(ce_|ce-|cloudevents_|cloudevents:|outbox_relay_|outbox-relay-)" flag "i").key') OPERATOR(pg_catalog.#>>) '{{}}')
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN true;
END
$$;

-- The table's CHECK on headers calls it, once per row that has headers at all. The
-- rule stays out of the constraint's own text on purpose: PostgreSQL reads a CHECK back
-- from its stored form and prepares it again for every statement, so a single-row
-- INSERT pays for every byte of it (the path inline cost ~7 us a row; the call, ~1 us
-- and only with headers).
-- Rows written before this migration may break the rule, and PostgreSQL checks a
-- constraint again on every UPDATE of a row, NOT VALID or not: the relay could no longer
-- mark them sent. So rows up to the last seq taken before this migration are exempt
-- (as are rows the CDC relay parks, whose headers an older emit() may have written):
-- no existing row is checked or changed, and `outbox-relay dead-letters retry`, which
-- puts a message back with its old seq, still works for them.
DO $reserved$
DECLARE
  messages regclass := (
    SELECT t.typrelid FROM pg_catalog.pg_type t
    WHERE t.oid = pg_catalog.pg_typeof(NULL::{schema}.messages)::oid);
  outbox_schema text := (
    SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = messages);
  written bigint;
BEGIN
  EXECUTE pg_catalog.format(
    'SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %s',
    pg_catalog.pg_get_serial_sequence(messages::text, 'seq')) INTO written;
  EXECUTE pg_catalog.format(
    'ALTER TABLE %s DROP CONSTRAINT messages_headers_check, '
    'ADD CONSTRAINT messages_headers_check CHECK (headers = %L OR seq <= %s '
    'OR parked_at IS NOT NULL OR %s.valid_headers(headers)) NOT VALID',
    messages, '{{}}', written, outbox_schema);
END
$reserved$;

-- The enqueue functions take deliver_at: the message is published once that time has
-- come (NULL or a time already past: at once). It goes into available_at, which the
-- relay already waits for. A new last parameter with a default, so every call written
-- for the functions before works unchanged; the old functions are dropped at the end of
-- this migration, their privileges carried over.
CREATE FUNCTION {schema}.enqueue(
  topic text, key text, payload jsonb, headers jsonb DEFAULT '{{}}',
  deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO {schema}.messages (topic, key, payload, headers, available_at)
  VALUES (enqueue.topic, enqueue.key, enqueue.payload::json, COALESCE(enqueue.headers, '{{}}'),
          GREATEST(now(), enqueue.deliver_at))
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

CREATE FUNCTION {schema}.enqueue(
  topic text, key text, payload text, headers jsonb DEFAULT '{{}}',
  deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO {schema}.messages (topic, key, payload, headers, available_at)
  VALUES (enqueue.topic, enqueue.key, enqueue.payload::json, COALESCE(enqueue.headers, '{{}}'),
          GREATEST(now(), enqueue.deliver_at))
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

CREATE FUNCTION {schema}.enqueue_binary(
  topic text, key text, payload bytea, headers jsonb DEFAULT '{{}}',
  content_type text DEFAULT 'application/octet-stream', deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO {schema}.messages (topic, key, payload_bytes, headers, content_type, available_at)
  VALUES (enqueue_binary.topic, enqueue_binary.key, enqueue_binary.payload,
          COALESCE(enqueue_binary.headers, '{{}}'), enqueue_binary.content_type,
          GREATEST(now(), enqueue_binary.deliver_at))
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

-- Many messages in one statement, in the order given: a bulk load pays a statement's
-- fixed cost (planning, preparing the table's expressions, the wake-up trigger) once,
-- not once per row. The arrays have one element per message; headers and deliver_at may
-- be NULL for all. Returns the new ids in the same order.
CREATE FUNCTION {schema}.enqueue_many(
  topics text[], keys text[], payloads text[], headers jsonb[] DEFAULT NULL,
  deliver_at timestamptz[] DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF cardinality(enqueue_many.keys) <> cardinality(enqueue_many.topics)
     OR cardinality(enqueue_many.payloads) <> cardinality(enqueue_many.topics)
     OR cardinality(enqueue_many.headers) <> cardinality(enqueue_many.topics)
     OR cardinality(enqueue_many.deliver_at) <> cardinality(enqueue_many.topics) THEN
    RAISE EXCEPTION 'enqueue_many takes arrays of one length: one element per message'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN QUERY
    INSERT INTO {schema}.messages AS m (topic, key, payload, headers, available_at)
    SELECT r.topic, r.key, r.payload::json, COALESCE(r.headers, '{{}}'),
           GREATEST(now(), r.deliver_at)
    FROM unnest(enqueue_many.topics, enqueue_many.keys, enqueue_many.payloads,
                enqueue_many.headers, enqueue_many.deliver_at)
         AS r(topic, key, payload, headers, deliver_at)
    RETURNING m.id;
END
$$;

-- uuid_v7() in plpgsql, the same expression: as a LANGUAGE sql function it was inlined
-- into every plan of an INSERT that takes the id's default, and inlining parses and
-- analyses the function's text each time. A driver that does not prepare its statements
-- has every INSERT planned, so each paid ~40 us for it; a prepared one pays the same per
-- row either way (benchmarks/README.md).
CREATE OR REPLACE FUNCTION {schema}.uuid_v7() RETURNS uuid
LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
BEGIN
  -- RFC 9562 version 7: 48-bit Unix milliseconds, then random bits, so ids sort by time.
  RETURN encode(
    set_bit(set_bit(set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1), 54, 1), 55, 0),
    'hex')::uuid;
END
$$;

-- The wake-up trigger, cheaper per statement (each single-row INSERT runs it): its
-- pinned search_path cost a configuration change in and out of every call (~2.5 us), so
-- every name in it is schema-qualified instead, operators too, and a caller's
-- search_path cannot redirect what this SECURITY DEFINER function runs. PERFORM ... LIMIT
-- 1 reads the same as EXISTS with a plan a little cheaper to start.
CREATE OR REPLACE FUNCTION {schema}.notify_relays() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
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

-- emit() checks its headers like enqueue(): its messages never touch the table.
CREATE OR REPLACE FUNCTION {schema}.cdc_emit(
  message_id uuid, topic text, key text, headers jsonb, content_type text,
  body_kind text, body bytea
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF topic IS NULL OR topic = '' OR length(topic) > 249 THEN
    RAISE EXCEPTION 'an outbox topic must have 1 to 249 characters'
      USING ERRCODE = 'check_violation';
  END IF;
  IF headers IS DISTINCT FROM '{{}}' THEN
    PERFORM {schema}.valid_headers(headers);
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

-- emit() with deliver_at: a logical message is decoded when its transaction commits and
-- cannot wait, so a message due later is written as a row instead (like enqueue()), which
-- the relay holds until it is due. Due now (NULL or past): a logical message, as before.
CREATE FUNCTION {schema}.emit(
  topic text, key text, payload jsonb, headers jsonb DEFAULT '{{}}',
  deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF emit.deliver_at > now() THEN
    RETURN {schema}.enqueue(emit.topic, emit.key, emit.payload, emit.headers, emit.deliver_at);
  END IF;
  RETURN {schema}.cdc_emit(
    {schema}.uuid_v7(), emit.topic, emit.key, emit.headers, 'application/json',
    CASE WHEN emit.payload IS NULL THEN 'null' ELSE 'json' END,
    convert_to(emit.payload::text, 'UTF8'));
END
$$;

CREATE FUNCTION {schema}.emit(
  topic text, key text, payload text, headers jsonb DEFAULT '{{}}',
  deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF emit.deliver_at > now() THEN
    RETURN {schema}.enqueue(emit.topic, emit.key, emit.payload, emit.headers, emit.deliver_at);
  END IF;
  RETURN {schema}.cdc_emit(
    {schema}.uuid_v7(), emit.topic, emit.key, emit.headers, 'application/json',
    CASE WHEN emit.payload IS NULL THEN 'null' ELSE 'json' END,
    convert_to(emit.payload::json::text, 'UTF8'));
END
$$;

CREATE FUNCTION {schema}.emit_binary(
  topic text, key text, payload bytea, headers jsonb DEFAULT '{{}}',
  content_type text DEFAULT 'application/octet-stream', deliver_at timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF emit_binary.deliver_at > now() THEN
    RETURN {schema}.enqueue_binary(emit_binary.topic, emit_binary.key, emit_binary.payload,
                                   emit_binary.headers, emit_binary.content_type,
                                   emit_binary.deliver_at);
  END IF;
  RETURN {schema}.cdc_emit(
    {schema}.uuid_v7(), emit_binary.topic, emit_binary.key, emit_binary.headers,
    emit_binary.content_type,
    CASE WHEN emit_binary.payload IS NULL THEN 'null' ELSE 'bytes' END, emit_binary.payload);
END
$$;

-- The functions written before this migration, each replaced above by the same one with
-- deliver_at added, go; their privileges go to their replacements first (a database that
-- revoked EXECUTE from PUBLIC and granted it to its writers keeps exactly that). A view
-- or a SQL-standard function body (BEGIN ATOMIC) of yours that calls one of them stops
-- this migration with PostgreSQL's dependency error: recreate it after upgrading.
DO $signatures$
DECLARE
  outbox_schema oid := (
    SELECT t.typnamespace FROM pg_catalog.pg_type t
    WHERE t.oid = pg_catalog.pg_typeof(NULL::{schema}.messages)::oid);
  timestamptz oid := 'pg_catalog.timestamptz'::pg_catalog.regtype;
  old record;
  replacement pg_catalog.regprocedure;
  privilege record;
BEGIN
  FOR old IN
    SELECT p.oid::pg_catalog.regprocedure AS fn, p.proname, p.proargtypes, p.proacl
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = outbox_schema
      AND p.proname IN ('enqueue', 'enqueue_binary', 'emit', 'emit_binary')
      AND p.proargtypes[p.pronargs - 1] <> timestamptz
  LOOP
    SELECT n.oid INTO STRICT replacement FROM pg_catalog.pg_proc n
    WHERE n.pronamespace = outbox_schema AND n.proname = old.proname
      AND n.proargtypes::oid[] = old.proargtypes::oid[] || timestamptz;
    IF old.proacl IS NOT NULL THEN
      EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', replacement);
      FOR privilege IN SELECT * FROM pg_catalog.aclexplode(old.proacl) LOOP
        EXECUTE pg_catalog.format(
          'GRANT EXECUTE ON FUNCTION %s TO %s%s', replacement,
          CASE WHEN privilege.grantee = 0 THEN 'PUBLIC'
               ELSE privilege.grantee::pg_catalog.regrole::text END,
          CASE WHEN privilege.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
      END LOOP;
    END IF;
    EXECUTE pg_catalog.format('DROP FUNCTION %s', old.fn);
  END LOOP;
END
$signatures$;
