//! Sharding: PostgreSQL-compatible partition hashing (and, later, shard key extraction,
//! fan-out and merging of results).
//!
//! Must not: do I/O. Routing decisions are pure functions the session calls.

pub mod hash;
