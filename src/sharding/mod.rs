//! Sharding: PostgreSQL-compatible partition hashing (`hash`), finding the sharding key in a
//! statement (`key`) and turning it into the set of shards a statement must run on (`plan`).
//!
//! Must not: do I/O. Routing decisions are pure functions the session calls; fan-out and
//! merging of results live in the client session (`client::fanout`).

pub mod combine;
pub mod hash;
pub mod key;
pub mod plan;
