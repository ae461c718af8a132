//! Integration-test harness for pgvane: real PostgreSQL servers in private temp
//! dirs (primaries and streaming replicas), the pgvane binary as a child
//! process, and client helpers.
//!
//! Use from a test file with `mod common;` and `use common::*;`.
//!
//! Test roles created on every server started with default options:
//!   app/app-secret (scram-sha-256, superuser, owns database `app`),
//!   md5user/md5-secret (md5), passuser/pass-secret (cleartext `password`),
//!   trustuser (trust), postgres (superuser, trust).
//! Everything listens on 127.0.0.1 only.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod pg;
pub mod pgvane;
pub mod util;
pub mod wire;

pub use client::{connect, psql_cmd, try_connect};
pub use pg::{
    password_for, shared, shared_replica, PgOptions, PgServer, APP_PASSWORD, MD5_PASSWORD,
    PASS_PASSWORD,
};
pub use pgvane::{guess_listen_port, pgvane_bin, Pgvane};
pub use util::{bin, free_port, pg_bin_dir, poll};
