//! The pure half of a session: what each server connection owes and what the client was told.
//!
//! Owns: response accounting ([`pending`]) — frames in, decisions out.
//!
//! Must not: use tokio or sockets; the session driver does all I/O and applies the decisions.

pub mod pending;

pub use pending::{Copy, Desync, Owed, Pending, Step, TxStatus};
