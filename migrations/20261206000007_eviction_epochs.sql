-- The epoch in which the idle sweep last evicted a scope's counter from
-- Redis (see src/jobs/idle.rs and docs/numbering.md). Written before the
-- eviction; a counter missing from Redis comes back exactly at MariaDB's
-- highest number only when this is the shard's current epoch (Redis lost
-- nothing since). Any other missing counter restarts above `reserved_to`.
ALTER TABLE number_reservations ADD COLUMN evicted_epoch BIGINT NULL;
