//! Scheduled background work other than the flusher.
//!
//! - [`counts`]: refreshes `chats_count` and `messages_count` of the rows
//!   marked dirty, on a cron schedule.
//! - [`indexer`]: applies queued changes to Meilisearch.
//! - [`idle`]: evicts the counters of idle chats from Redis.

pub mod counts;
pub mod idle;
pub mod indexer;
