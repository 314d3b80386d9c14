//! Integration tests: the real service over real HTTP, against real MariaDB
//! and Redis (one database and key prefix per test, so they run in parallel).

mod admin;
mod applications;
mod backpressure;
mod badinput;
mod batch;
mod chats;
#[path = "../support/cluster.rs"]
mod cluster;
mod cluster_tests;
mod counts;
mod cursor;
mod deletes;
mod docs;
mod durability;
mod events;
mod events_measure;
mod helpers;
mod idempotency;
mod idle;
mod indexer;
mod lease;
mod messages;
mod numbering;
mod openapi;
mod promise;
mod ratelimit;
mod replicas;
mod search;
mod search_topk;
mod security;
mod shards;
#[path = "../support/mod.rs"]
mod support;
mod timestamps;
mod wrapped;
mod writebehind;
