//! Replication awareness: per-shard health and lag of the primary and its replicas, the
//! circuit breaker that bans failing replicas, and the policy that picks a replica for a read.
//!
//! Owns: `lsn` (WAL position text form), `state` (lock-free per-backend state the hot path
//! reads, circuit breaker), `monitor` (the background task that measures it), `pick`
//! (eligibility and load balancing).
//!
//! Must not: forward client traffic, look at SQL or touch the pools. Sessions read this
//! state and report data-path successes/failures into it; only the monitor measures lag.
//!
//! Settings semantics: `max_lag_bytes == 0` and `max_lag == 0` mean "no bound";
//! `ban_after_errors == 0` disables the circuit breaker.

use std::time::Duration;

pub mod lsn;
pub mod monitor;
pub mod pick;
pub mod state;

pub use lsn::{format_lsn, parse_lsn};
pub use monitor::{spawn_monitor, MonitorTarget};
pub use pick::{eligibility, pick_replica, pick_replica_at, Balancing, ReadRequirements};
pub use state::{
    is_ban_worthy, now_ms, BackendState, Circuit, Ineligible, Replication, ShardState,
};

/// Policy knobs (the lead fills them from config `[databases.routing]`).
#[derive(Clone, Debug)]
pub struct ReplicationSettings {
    /// Replicas whose replay is more than this many bytes behind get no reads (0 = no bound).
    pub max_lag_bytes: u64,
    /// Replicas whose replay is more than this far behind get no reads (0 = no bound).
    pub max_lag: Duration,
    /// How often the monitor probes every backend of a shard.
    pub check_interval: Duration,
    /// How long an open circuit keeps a backend out of rotation.
    pub ban_time: Duration,
    /// Consecutive failures that open the circuit (0 = never).
    pub ban_after_errors: u32,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            max_lag_bytes: 1_048_576,
            max_lag: Duration::from_secs(5),
            check_interval: Duration::from_millis(250),
            ban_time: Duration::from_secs(30),
            ban_after_errors: 3,
        }
    }
}
