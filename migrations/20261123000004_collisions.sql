-- Collision counters (see src/store/bulk.rs). A flushed record whose unique
-- key already holds a *different* record (another created_at, or another body
-- on a message never edited) is a collision: Redis handed out a number that
-- MariaDB already had, for example after Redis came back from an older
-- snapshot. The flusher's idempotent INSERT then adds 1 to the stored row's
-- `collisions` instead of doing nothing, which makes MariaDB report the row as
-- changed (affected rows 2, not 1), so collisions are counted by the INSERT
-- itself and only a batch that had one pays for a read-back. The stored row
-- is otherwise untouched; the colliding record goes to the dead-letter list.
ALTER TABLE chats ADD COLUMN collisions INT UNSIGNED NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN collisions INT UNSIGNED NOT NULL DEFAULT 0;
