-- outbox-relay migration 5: let autovacuum keep pace with a busy outbox.
-- {schema} is replaced by the quoted schema name; literal braces are doubled.
--
-- Every message is inserted and then deleted (or marked sent, then deleted by
-- retention), so the table turns its whole content over every few seconds: at 8,000
-- messages/s of 1 KB, 12 MB of dead rows a second. Under the default cost delay one
-- autovacuum pass over it fell behind: in a 10-minute soak the heap grew to 2.9 GB and a
-- pass took 70 s, during which it grew further. The outbox is hot in shared buffers, so
-- vacuuming it at full speed costs little I/O; undo with
-- ALTER TABLE ... RESET (autovacuum_vacuum_cost_delay) if it competes with a busy disk.
-- vacuum_truncate = false: giving the empty tail of the file back to the OS takes an
-- ACCESS EXCLUSIVE lock, which makes the application's inserts wait, for space the
-- table needs again within the minute.
ALTER TABLE {schema}.messages SET (
  autovacuum_vacuum_cost_delay = 0,
  vacuum_truncate = false
);
