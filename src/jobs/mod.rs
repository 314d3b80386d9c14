//! Scheduled background work other than the flusher.
//!
//! - [`counts`]: refreshes `chats_count` and `messages_count` of the rows
//!   marked dirty, on a cron schedule.

pub mod counts;
