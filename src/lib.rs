//! # chat-api
//!
//! A chat-system REST API with write-behind persistence. Applications
//! (identified by a generated token) own chats, numbered 1, 2, 3… per
//! application; chats own messages, numbered 1, 2, 3… per chat.
//!
//! Creating a chat or a message makes one Redis round trip: a Lua script
//! allocates the number and queues the record atomically, and the client gets
//! `201` at once. A flusher writes the queues to MariaDB in multi-row
//! `INSERT`s, when a queue reaches its batch size or when its timer fires.
//!
//! ## Layout
//! - [`config`]: every environment variable, typed and documented.
//! - [`error`]: the one API error type, with a status per variant.
//! - [`domain`]: validated values (names, bodies, tokens, pages).
//! - [`http`]: one module per resource, assembled with Swagger UI and the
//!   spec; [`http::admin`] is the operator API behind `ADMIN_API_KEY` (and,
//!   with `ADMIN_BIND_ADDR`, on a listener of its own).
//! - [`writebehind`]: the core: allocate+enqueue scripts, claim / lease /
//!   acknowledge, the flusher, recovery, dead letters (list, replay,
//!   discard) and a read-only look into the queues for operators.
//! - [`store`]: MariaDB queries, bulk inserts included; the cross-application
//!   listings; the two search backends.
//! - [`jobs`]: scheduled work (the counts refresh, the search indexer).
//! - [`startup`]: building and running the service, graceful shutdown.
//! - [`telemetry`]: structured logs and Prometheus metrics.

pub mod config;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod writebehind;
