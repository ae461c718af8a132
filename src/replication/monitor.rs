//! The background monitor of one shard: every `check_interval` it probes the primary
//! (`pg_current_wal_lsn()`), then all replicas concurrently (replay/receive LSN, replay
//! timestamp), over its own small tokio-postgres connections (application_name
//! `pgvane_monitor`), and stores health, lag and circuit-breaker input in the shard's state.
//! While someone waits in `wait_for_lsn` it polls every 10 ms.
//!
//! Must not: route, touch the pools or block the data path. One round trip per probe; every
//! connect and probe has a timeout. Stops when the `ShardState` is dropped (it holds only a
//! `Weak`) or when its task is aborted.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::lsn::parse_lsn;
use super::state::{is_ban_worthy, now_ms, BackendState, ShardState};
use super::ReplicationSettings;

/// Where and as whom the monitor connects.
#[derive(Clone, Debug)]
pub struct MonitorTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

/// One round trip on the primary. On a primary that turned out to be a standby,
/// `pg_current_wal_lsn()` would fail, so its replay position is reported instead. The insert
/// position (which covers every commit made so far, even unflushed asynchronous ones) feeds
/// the time-lag estimate.
const PRIMARY_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END";

/// One round trip on a replica; the time lag is measured on the replica itself.
const REPLICA_SQL: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), \
     pg_last_wal_receive_lsn(), EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())";

/// Poll period while readers wait for a replica to catch up.
const FAST_POLL: Duration = Duration::from_millis(10);
/// Primary positions kept for the time-lag estimate.
const HISTORY: usize = 512;

/// Spawns the monitor task for one shard. `replicas[i]` is `shard.replicas[i]`. The task
/// ends when `shard` is dropped everywhere else (or when the handle is aborted).
pub fn spawn_monitor(
    shard: Arc<ShardState>,
    primary: MonitorTarget,
    replicas: Vec<MonitorTarget>,
    settings: ReplicationSettings,
) -> tokio::task::JoinHandle<()> {
    if replicas.len() != shard.replicas.len() {
        tracing::warn!(
            targets = replicas.len(),
            replicas = shard.replicas.len(),
            "replication monitor: target count differs from replica count; extra ones ignored"
        );
    }
    let weak = Arc::downgrade(&shard);
    let wake = shard.wake_handle();
    drop(shard);
    tokio::spawn(run(weak, wake, primary, replicas, settings))
}

async fn run(
    shard: Weak<ShardState>,
    wake: Arc<tokio::sync::Notify>,
    primary: MonitorTarget,
    replicas: Vec<MonitorTarget>,
    settings: ReplicationSettings,
) {
    let timeout =
        (settings.check_interval * 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let mut primary = Conn::new(primary);
    let mut replicas: Vec<Conn> = replicas.into_iter().map(Conn::new).collect();
    let mut history: VecDeque<(Instant, u64)> = VecDeque::with_capacity(HISTORY);
    loop {
        let Some(state) = shard.upgrade() else { return };
        poll_primary(&state, &mut primary, &mut history, &settings, timeout).await;
        replicas = poll_replicas(&state, replicas, &history, &settings, timeout).await;
        state.poll_done();
        let delay = if state.has_waiters() {
            FAST_POLL.min(settings.check_interval)
        } else {
            settings.check_interval
        };
        drop(state);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
    }
}

async fn poll_primary(
    state: &ShardState,
    conn: &mut Conn,
    history: &mut VecDeque<(Instant, u64)>,
    settings: &ReplicationSettings,
    timeout: Duration,
) {
    let b = &state.primary;
    match conn
        .query(PRIMARY_SQL, timeout, settings.check_interval)
        .await
    {
        Probe::Skipped => {}
        Probe::Failed { error, ban_worthy } => failed(b, settings, error, ban_worthy),
        Probe::Row(row) => {
            let in_recovery = row.first().is_some_and(|v| v.as_deref() == Some("t"));
            let lsn = col_lsn(&row, 1).unwrap_or(0);
            let insert = col_lsn(&row, 2).unwrap_or(lsn);
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back((Instant::now(), insert));
            state
                .primary_lsn
                .store(lsn, std::sync::atomic::Ordering::Release);
            succeeded(b, || {
                b.set_measured(in_recovery, lsn, lsn, 0, Some(Duration::ZERO))
            });
        }
    }
}

async fn poll_replicas(
    state: &ShardState,
    conns: Vec<Conn>,
    history: &VecDeque<(Instant, u64)>,
    settings: &ReplicationSettings,
    timeout: Duration,
) -> Vec<Conn> {
    let mut set = JoinSet::new();
    let targets: Vec<MonitorTarget> = conns.iter().map(|c| c.target.clone()).collect();
    let interval = settings.check_interval;
    for (i, mut conn) in conns.into_iter().enumerate() {
        set.spawn(async move {
            let probe = conn.query(REPLICA_SQL, timeout, interval).await;
            (i, conn, probe)
        });
    }
    let mut back: Vec<Option<Conn>> = targets.iter().map(|_| None).collect();
    let primary_lsn = state.primary_lsn();
    while let Some(done) = set.join_next().await {
        let Ok((i, conn, probe)) = done else { continue };
        back[i] = Some(conn);
        let Some(b) = state.replicas.get(i) else {
            continue;
        };
        match probe {
            Probe::Skipped => {}
            Probe::Failed { error, ban_worthy } => failed(b, settings, error, ban_worthy),
            Probe::Row(row) => {
                let in_recovery = row.first().is_some_and(|v| v.as_deref() == Some("t"));
                let replay = col_lsn(&row, 1).unwrap_or(0);
                let receive = col_lsn(&row, 2).unwrap_or(replay);
                let lag_bytes = primary_lsn.saturating_sub(replay);
                let lag = if !in_recovery || replay >= primary_lsn {
                    Some(Duration::ZERO)
                } else {
                    behind_lag(&row, replay, history)
                };
                succeeded(b, || {
                    b.set_measured(in_recovery, replay, receive, lag_bytes, lag)
                });
            }
        }
    }
    // A probe task that panicked loses its connection only; start over with the target.
    back.into_iter()
        .zip(targets)
        .map(|(c, t)| c.unwrap_or_else(|| Conn::new(t)))
        .collect()
}

/// Time lag of a replica that is behind: `now() - pg_last_xact_replay_timestamp()` from the
/// replica, capped by the primary's own history (the replica has everything the primary had
/// inserted when its position was last at or below the replay position), so a replica that
/// is briefly behind after a long idle period is not reported as hours behind. `None` when
/// neither is known.
fn behind_lag(
    row: &[Option<String>],
    replay: u64,
    history: &VecDeque<(Instant, u64)>,
) -> Option<Duration> {
    let measured = row
        .get(3)
        .and_then(|v| v.as_deref())
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    let estimated = history
        .iter()
        .rev()
        .find(|(_, lsn)| *lsn <= replay)
        .map(|(at, _)| at.elapsed());
    match (measured, estimated) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn col_lsn(row: &[Option<String>], i: usize) -> Option<u64> {
    row.get(i)?.as_deref().and_then(parse_lsn)
}

fn succeeded(b: &BackendState, store: impl FnOnce()) {
    let was_down = !b.healthy() && b.probes() > 0;
    store();
    b.record_success_at(now_ms());
    if was_down {
        tracing::info!(backend = %b.addr, primary = b.is_primary(), "replication monitor: backend reachable again");
    }
}

fn failed(b: &BackendState, settings: &ReplicationSettings, error: String, ban_worthy: bool) {
    let was_up = b.healthy();
    if was_up || b.probes() == 0 {
        tracing::warn!(backend = %b.addr, primary = b.is_primary(), %error, "replication monitor: backend unreachable");
    }
    b.set_down(error);
    if ban_worthy {
        b.record_failure_at(settings, now_ms());
    }
}

enum Probe {
    Row(Vec<Option<String>>),
    Failed {
        error: String,
        ban_worthy: bool,
    },
    /// Not connected and the reconnect back-off has not passed: nothing new is known.
    Skipped,
}

/// The monitor's connection to one backend (reconnected on demand).
struct Conn {
    target: MonitorTarget,
    client: Option<Client>,
    retry_at: Option<Instant>,
}

impl Conn {
    fn new(target: MonitorTarget) -> Conn {
        Conn {
            target,
            client: None,
            retry_at: None,
        }
    }

    async fn query(&mut self, sql: &str, timeout: Duration, backoff: Duration) -> Probe {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Probe::Skipped;
            }
            match self.connect(timeout).await {
                Ok(c) => {
                    self.client = Some(c);
                    self.retry_at = None;
                }
                Err(p) => {
                    self.retry_at = Some(Instant::now() + backoff);
                    return p;
                }
            }
        }
        let Some(client) = &self.client else {
            return Probe::Skipped;
        };
        let result = tokio::time::timeout(timeout, client.simple_query(sql)).await;
        match result {
            Ok(Ok(msgs)) => {
                let row = msgs.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                });
                match row {
                    Some(row) => Probe::Row(row),
                    None => Probe::Failed {
                        error: "probe returned no row".into(),
                        ban_worthy: false,
                    },
                }
            }
            Ok(Err(e)) => {
                self.client = None;
                classify(&e)
            }
            Err(_) => {
                self.client = None;
                Probe::Failed {
                    error: format!("probe timed out after {timeout:?}"),
                    ban_worthy: true,
                }
            }
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Client, Probe> {
        let t = &self.target;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&t.host)
            .port(t.port)
            .user(&t.user)
            .dbname(&t.dbname)
            .application_name("pgvane_monitor")
            .connect_timeout(timeout);
        if let Some(p) = &t.password {
            cfg.password(p);
        }
        match tokio::time::timeout(timeout, cfg.connect(NoTls)).await {
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(client)
            }
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(Probe::Failed {
                error: format!("connect timed out after {timeout:?}"),
                ban_worthy: true,
            }),
        }
    }
}

/// Server errors count against the circuit only when ban-worthy (e.g. 57P03 "the database
/// system is starting up"); errors without a SQLSTATE are I/O or connection failures.
fn classify(e: &tokio_postgres::Error) -> Probe {
    let ban_worthy = e.code().is_none_or(|c| is_ban_worthy(c.code()));
    let error = match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    };
    Probe::Failed { error, ban_worthy }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lag: Option<&str>) -> Vec<Option<String>> {
        vec![
            Some("t".into()),
            Some("0/100".into()),
            Some("0/100".into()),
            lag.map(str::to_string),
        ]
    }

    #[test]
    fn behind_lag_uses_the_smaller_bound() {
        let now = Instant::now();
        let mut h = VecDeque::new();
        // Idle for an hour, then a write: the replica's replay timestamp is an hour old but
        // it had everything the primary had a moment ago.
        h.push_back((now - Duration::from_millis(300), 0x100));
        h.push_back((now, 0x200));
        let lag = behind_lag(&row(Some("3600.5")), 0x100, &h).unwrap();
        assert!(
            lag >= Duration::from_millis(300) && lag < Duration::from_secs(2),
            "{lag:?}"
        );
        // No history at or below the replay position: the replica's own measure.
        let lag = behind_lag(&row(Some("2.5")), 0x50, &h).unwrap();
        assert_eq!(lag, Duration::from_millis(2500));
        // Clock skew never makes it negative.
        assert_eq!(
            behind_lag(&row(Some("-0.2")), 0x50, &h),
            Some(Duration::ZERO)
        );
        // Nothing known.
        assert_eq!(behind_lag(&row(None), 0x50, &h), None);
    }
}
