-- Demo roles of docker-compose.yml (passwords match compose/secrets/). The entrypoint
-- runs this once, on an empty data directory, as the postgres superuser.
--   app:    owns the database and the outbox schemas; runs `outbox-relay migrate`
--   relay:  only what `outbox-relay migrate --print-grants relay` prints
--   writer: only what `outbox-relay migrate --print-grants writer --mode producer` prints
CREATE ROLE app LOGIN PASSWORD 'app-demo-password';
CREATE ROLE relay LOGIN PASSWORD 'relay-demo-password';
CREATE ROLE writer LOGIN PASSWORD 'writer-demo-password';
ALTER DATABASE app OWNER TO app;
