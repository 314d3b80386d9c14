//! Scheduled background work other than the flusher.
//!
//! - [`counts`]: refreshes `chats_count` and `messages_count` of the rows
//!   marked dirty, on a cron schedule.
//! - [`indexer`]: applies queued changes to Meilisearch.

pub mod counts;
pub mod indexer;
