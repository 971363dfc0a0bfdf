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
