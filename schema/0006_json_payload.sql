-- outbox-relay migration 6: JSON payloads are stored as json (the text as written).
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- The relay publishes a JSON payload as its text. A jsonb column parsed the text into a
-- tree on every insert and printed it back on every claim: for ~1 KB events that cost
-- the writer ~13 us and the claim ~6 us of server CPU per message, against ~1.5 us to
-- validate json and to read it back (see benchmarks/README.md, "json payloads"). The
-- outbox never queries inside a payload, so it keeps the text: a payload is now
-- published byte for byte as the application wrote it (jsonb used to reorder keys and
-- respace it). Headers stay jsonb: they are small and read as objects.
--
-- This rewrites both tables under an ACCESS EXCLUSIVE lock, so writers wait for it. An
-- outbox that deletes what it sends (--retention 0, the default) is small and this takes
-- moments; one that keeps sent rows for hours should purge them before upgrading.
ALTER TABLE {schema}.messages ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE {schema}.dead_letters ALTER COLUMN payload TYPE json USING payload::json;

-- The text overloads take JSON text and store it as written (json validates it). A
-- quoted literal or a text/varchar parameter calls these; a jsonb value (to_jsonb(NEW),
-- '...'::jsonb) still calls the jsonb versions, which store jsonb's text.
CREATE FUNCTION {schema}.enqueue(
  topic text, key text, payload text, headers jsonb DEFAULT '{{}}'
) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  INSERT INTO {schema}.messages (topic, key, payload, headers)
  VALUES (topic, key, payload::json, COALESCE(headers, '{{}}'))
  RETURNING id
$$;

CREATE FUNCTION {schema}.emit(
  topic text, key text, payload text, headers jsonb DEFAULT '{{}}'
) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  SELECT {schema}.cdc_emit(
    {schema}.uuid_v7(), topic, key, headers, 'application/json',
    CASE WHEN payload IS NULL THEN 'null' ELSE 'json' END,
    convert_to(payload::json::text, 'UTF8'))
$$;
