-- Named queries for finding the outboxes of a database (relay.outboxes).

-- name: schemas_like
-- Schemas whose name matches a LIKE pattern and which hold an outbox: its messages table
-- and its migrations table, so a schema that is half created (a tenant being set up) or
-- never migrated is not taken for one. System schemas never match.
SELECT n.nspname
FROM pg_namespace n
WHERE n.nspname LIKE %(pattern)s
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
  AND to_regclass(format('%%I.messages', n.nspname)) IS NOT NULL
  AND to_regclass(format('%%I.schema_migrations', n.nspname)) IS NOT NULL
ORDER BY n.nspname;

-- name: schemas_existing_like
-- Every schema whose name matches a LIKE pattern, holding an outbox or not yet: the
-- schemas `outbox-relay migrate --schema-pattern` creates or upgrades the outbox in.
-- System schemas never match.
SELECT n.nspname
FROM pg_namespace n
WHERE n.nspname LIKE %(pattern)s
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
ORDER BY n.nspname;

-- name: has_work
-- One outbox's branch of the look its database's outboxes share (relay.poll.shared): its
-- name if it holds a message to claim or a delayed message that is due. The branches are
-- joined with UNION ALL, one query for every outbox of a database.
SELECT {outbox}::text WHERE EXISTS (
    SELECT 1 FROM {schema}.messages
    WHERE sent_at IS NULL AND parked_at IS NULL AND available_at <= now()
  ) OR EXISTS (SELECT 1 FROM {schema}.scheduled WHERE available_at <= now())

-- name: has_cdc_work
-- has_work for an outbox streamed from a slot (relay.cdc.group): its rows are published
-- from the stream, so only set-aside rows that may be claimed now and delayed messages
-- that are due are work for it to look for.
SELECT {outbox}::text WHERE EXISTS (
    SELECT 1 FROM {schema}.messages m
    WHERE m.set_aside_at IS NOT NULL AND m.sent_at IS NULL AND m.parked_at IS NULL
      AND m.available_at <= now()
      AND NOT EXISTS (
        SELECT 1 FROM {schema}.key_holds h WHERE h.key = m.key AND h.held_until > now()
      )
  ) OR EXISTS (SELECT 1 FROM {schema}.scheduled WHERE available_at <= now())

-- name: next_due_of
-- One outbox's branch of the look at its scheduled table that NOTIFYs ask for
-- (relay.poll.due_looks): its name and the seconds until its earliest delayed message is
-- due (zero or less: due now; NULL: none). The branches are joined with UNION ALL.
SELECT {outbox}::text, EXTRACT(epoch FROM min(available_at) - now())::float8
FROM {schema}.scheduled
