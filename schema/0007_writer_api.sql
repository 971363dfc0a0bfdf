-- outbox-relay migration 7: what writing into the outbox costs the application.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- enqueue() was a LANGUAGE sql function: PostgreSQL keeps no plan for those, so every
-- call parsed and planned its INSERT again (the id's default, uuid_v7(), inlined and
-- planned with it), about 100 us of server time per row, four times the INSERT itself.
-- A plpgsql function keeps the plan of its INSERT for the session
-- (benchmarks/writer_cost.py; the figures are in benchmarks/README.md).

CREATE OR REPLACE FUNCTION {schema}.enqueue(
  topic text, key text, payload jsonb, headers jsonb DEFAULT '{{}}'
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO {schema}.messages (topic, key, payload, headers)
  VALUES (enqueue.topic, enqueue.key, enqueue.payload::json, COALESCE(enqueue.headers, '{{}}'))
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.enqueue(
  topic text, key text, payload text, headers jsonb DEFAULT '{{}}'
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO {schema}.messages (topic, key, payload, headers)
  VALUES (enqueue.topic, enqueue.key, enqueue.payload::json, COALESCE(enqueue.headers, '{{}}'))
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION {schema}.enqueue_binary(
  topic text, key text, payload bytea, headers jsonb DEFAULT '{{}}',
  content_type text DEFAULT 'application/octet-stream'
) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO {schema}.messages (topic, key, payload_bytes, headers, content_type)
  VALUES (enqueue_binary.topic, enqueue_binary.key, enqueue_binary.payload,
          COALESCE(enqueue_binary.headers, '{{}}'), enqueue_binary.content_type)
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

-- Many messages in one statement, in the order given: a bulk load pays a statement's
-- fixed cost (planning, preparing the table's expressions, the wake-up trigger) once,
-- not once per row. The arrays have one element per message; headers may be NULL for
-- all. Returns the new ids in the same order.
CREATE FUNCTION {schema}.enqueue_many(
  topics text[], keys text[], payloads text[], headers jsonb[] DEFAULT NULL
) RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF cardinality(enqueue_many.keys) <> cardinality(enqueue_many.topics)
     OR cardinality(enqueue_many.payloads) <> cardinality(enqueue_many.topics)
     OR cardinality(enqueue_many.headers) <> cardinality(enqueue_many.topics) THEN
    RAISE EXCEPTION 'enqueue_many takes arrays of one length: one element per message'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN QUERY
    INSERT INTO {schema}.messages AS m (topic, key, payload, headers)
    SELECT r.topic, r.key, r.payload::json, COALESCE(r.headers, '{{}}')
    FROM unnest(enqueue_many.topics, enqueue_many.keys, enqueue_many.payloads,
                enqueue_many.headers) AS r(topic, key, payload, headers)
    RETURNING m.id;
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
