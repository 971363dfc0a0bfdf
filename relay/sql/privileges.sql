-- What the connected role may do in the outbox schema, checked before the relay starts
-- (relay/privileges.py), so a missing GRANT is named instead of failing the first claim.

-- name: schema_usage
-- NULL when the schema does not exist (has_schema_privilege would raise).
SELECT CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s)
            THEN pg_catalog.has_schema_privilege(%(schema)s, 'USAGE') END AS usage,
       current_user AS role_name;

-- name: missing_privileges
-- The (table, privilege) pairs the role lacks, among tables that exist.
SELECT wanted.table_name, wanted.privilege
FROM unnest(%(tables)s::text[], %(privileges)s::text[]) AS wanted(table_name, privilege)
WHERE pg_catalog.to_regclass(format('%%I.%%I', %(schema)s::text, wanted.table_name)) IS NOT NULL
  AND NOT pg_catalog.has_table_privilege(
        format('%%I.%%I', %(schema)s::text, wanted.table_name), wanted.privilege)
ORDER BY wanted.table_name, wanted.privilege;
