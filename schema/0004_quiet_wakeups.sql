-- outbox-relay migration 4: writers NOTIFY only while a polling relay may wait for work.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- NOTIFY takes a database-wide lock when its transaction commits and holds it through the
-- commit's WAL flush, so writers whose inserts notify commit one at a time. Measured on 2
-- cores with synchronous_commit=on (benchmarks/notify_cost.py): 8 writers of 1-row
-- transactions committed 2,350 rows/s with the NOTIFY and 3,900 without; 4 writers of
-- 10-row transactions 19,200 and 24,000.
-- A polling relay whose every lane finds rows fast enough polls every few milliseconds
-- instead of waiting, so it clears `listening` and writers skip the NOTIFY; before a
-- lane waits again it sets `listening` and looks once more (relay/wakeups.py). Relays
-- of earlier versions never clear it, and a relay that died stops counting when its row
-- expires.
ALTER TABLE {schema}.relays ADD COLUMN listening boolean NOT NULL DEFAULT true;

-- SECURITY DEFINER: writers need no privilege on the relays table (the function belongs
-- to the role that ran the migrations); the search path is pinned for the same reason.
CREATE OR REPLACE FUNCTION {schema}.notify_relays() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF EXISTS (
    SELECT FROM {schema}.relays
    WHERE listening AND mode = 'poll' AND expires_at > now()
  ) THEN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.messages', '');
  END IF;
  RETURN NULL;
END
$$;
