//! Scheduled background work other than the flusher.
//!
//! - [`counts`]: refreshes `chats_count` and `messages_count` of the rows
//!   marked dirty, on a cron schedule.
//! - [`indexer`]: applies queued search-index changes (Meilisearch, or the
//!   term index in MariaDB).
//! - [`idle`]: evicts the counters of idle chats from Redis.

pub mod counts;
pub mod idle;
pub mod indexer;
