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
//! Layers that only point down (checked with `farm-studio look`, see
//! `docs/architecture.md`):
//! - [`http`]: one module per resource, the one API error type
//!   ([`http::error`]), Swagger UI and the spec; [`http::admin`] is the
//!   operator API behind `ADMIN_API_KEY`.
//! - [`writebehind`]: the core: allocate+enqueue scripts, the lease queue
//!   (claim / renew / acknowledge / give back / recover), the flusher and
//!   what follows a commit, dead letters, shards, a read-only look into the
//!   queues for operators.
//! - [`jobs`]: scheduled work (the counts refresh, the search indexer).
//! - [`store`]: MariaDB queries, bulk inserts included; the cross-application
//!   listings; the two search backends.
//! - [`redis`]: the Redis client: pool, Sentinel, Cluster, the epoch check,
//!   and the one call path with its time limit.
//! - [`domain`], [`config`], [`telemetry`]: validated values and records,
//!   every environment variable, logs and metrics.
//! - [`startup`]: building and running the service, graceful shutdown.

pub mod config;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod redis;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod writebehind;
