//! The pure half of a session: what each server connection owes and what the client was told.
//!
//! Owns: response accounting ([`pending`]) — frames in, decisions out — and session state
//! as read from the server ([`state`]).
//!
//! Must not: use tokio or sockets; the session driver does all I/O and applies the decisions.

pub mod pending;
pub mod state;

pub use pending::{Copy, Desync, Owed, Pending, Refusal, Step, TxStatus};
