-- Several gateways share the queue: an attempt in flight leases its delivery row until
-- `lease_until` (epoch ms), so a copy of the same job that another gateway picked up (its
-- worker was thought dead while it was still sending) waits instead of sending in parallel.
-- NULL: not leased. The column exists on SQLite too (same schema, same statements) but only
-- PostgreSQL deployments take leases: SQLite serves one process, whose in-process slot does it.
ALTER TABLE deliveries ADD COLUMN lease_until BIGINT;
