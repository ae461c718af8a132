//! pgvane: a PostgreSQL wire-protocol connection pooler with read/write splitting and
//! hash sharding. The binary (`src/main.rs`) is a thin CLI over these modules.
//!
//! Data flows one way: client socket → session state machine (`client`) → pool checkout
//! (`pool`) → server socket (`server`), and back.

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod database;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod params;
pub mod pool;
pub mod protocol;
pub mod replication;
pub mod router;
pub mod server;
pub mod sharding;
