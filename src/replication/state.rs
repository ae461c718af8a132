//! Per-backend and per-shard replication state: health, WAL positions, lag, the circuit
//! breaker, routing counters, and the notification that lets readers wait for a replica to
//! catch up.
//!
//! Owns: the atomics every read statement consults (no locks on that path) and the circuit
//! breaker transitions (closed → open → half-open), with an injectable clock (`*_at(now_ms)`).
//!
//! Must not: do I/O or decide routing. The monitor writes positions/health, the data path
//! reports successes/failures, `pick` turns this state into decisions.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ReplicationSettings;

/// Milliseconds since the first call in this process (the clock of circuit deadlines).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Whether an error with this SQLSTATE counts against a backend's circuit breaker:
/// connection exceptions (class 08), shutdowns (57P01 admin, 57P02 crash, 57P03 cannot
/// connect now) and insufficient resources (class 53). Ordinary SQL errors never do.
pub fn is_ban_worthy(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03")
}

/// `lag_micros` value meaning "behind, by an unknown amount of time".
const LAG_UNKNOWN: u64 = u64::MAX;

/// Circuit breaker state of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Circuit {
    /// Normal operation; consecutive failures are counted.
    Closed = 0,
    /// Banned until the deadline; after it, exactly one trial request is let through.
    Open = 1,
    /// A trial request is out; its success closes the circuit, its failure re-opens it.
    HalfOpen = 2,
}

impl Circuit {
    fn from_u8(v: u8) -> Circuit {
        match v {
            1 => Circuit::Open,
            2 => Circuit::HalfOpen,
            _ => Circuit::Closed,
        }
    }
}

/// Why a replica may not serve a read (also the "why primary" routing reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Unreachable (last probe failed) or not probed yet.
    Down,
    /// Circuit breaker open (or its one trial request is out).
    Banned,
    /// Reachable but not a standby any more (promoted).
    NotInRecovery,
    /// Replay is this many bytes behind the primary (over `max_lag_bytes`).
    LagBytes(u64),
    /// Replay is this far behind (over `max_lag`).
    LagTime(Duration),
    /// Read-your-writes: the replica has not replayed the client's last write yet.
    BehindLsn { replay: u64, need: u64 },
    /// Lag over the statement's own staleness bound.
    TooStale(Duration),
    /// The shard has no replicas (or none with a weight above 0).
    NoReplicas,
}

impl Ineligible {
    /// Ordering for "best candidate" reasons: lower is closer to being eligible.
    pub(crate) fn rank(&self) -> (u8, u64) {
        match *self {
            Ineligible::BehindLsn { replay, need } => (0, need.saturating_sub(replay)),
            Ineligible::TooStale(d) => (1, d.as_micros() as u64),
            Ineligible::LagTime(d) => (2, d.as_micros() as u64),
            Ineligible::LagBytes(b) => (3, b),
            Ineligible::Banned => (4, 0),
            Ineligible::NotInRecovery => (5, 0),
            Ineligible::Down => (6, 0),
            Ineligible::NoReplicas => (7, 0),
        }
    }
}

fn fmt_lag(d: Duration) -> String {
    if d.as_micros() >= u128::from(LAG_UNKNOWN) {
        "an unknown time".to_string()
    } else {
        format!("{} ms", d.as_millis())
    }
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Ineligible::Down => f.write_str("replica down"),
            Ineligible::Banned => f.write_str("replica banned after errors"),
            Ineligible::NotInRecovery => f.write_str("replica not in recovery (promoted)"),
            Ineligible::LagBytes(b) => write!(f, "replica lagging by {b} bytes"),
            Ineligible::LagTime(d) => write!(f, "replica lagging by {}", fmt_lag(d)),
            Ineligible::BehindLsn { replay, need } => write!(
                f,
                "replica at {} has not replayed {} yet",
                super::format_lsn(replay),
                super::format_lsn(need)
            ),
            Ineligible::TooStale(d) => {
                write!(f, "replica lag {} over the statement's bound", fmt_lag(d))
            }
            Ineligible::NoReplicas => f.write_str("no replicas"),
        }
    }
}

/// State of one backend (primary or replica). Readers only load atomics.
#[derive(Debug)]
pub struct BackendState {
    /// `host:port`.
    pub addr: String,
    primary: bool,
    replay_lsn: AtomicU64,
    receive_lsn: AtomicU64,
    lag_bytes: AtomicU64,
    lag_micros: AtomicU64,
    healthy: AtomicBool,
    in_recovery: AtomicBool,
    circuit: AtomicU8,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    probes: AtomicU64,
    reads: AtomicU64,
    active: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

impl BackendState {
    /// A primary; assumed reachable until a probe says otherwise (writes fail fast only on
    /// evidence).
    pub fn primary(addr: String) -> BackendState {
        BackendState::new(addr, true)
    }

    /// A replica; gets no reads until the first successful probe.
    pub fn replica(addr: String) -> BackendState {
        BackendState::new(addr, false)
    }

    fn new(addr: String, primary: bool) -> BackendState {
        BackendState {
            addr,
            primary,
            replay_lsn: AtomicU64::new(0),
            receive_lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            healthy: AtomicBool::new(primary),
            in_recovery: AtomicBool::new(!primary),
            circuit: AtomicU8::new(Circuit::Closed as u8),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }
    /// Last replayed WAL position (replicas; on a primary in recovery too).
    pub fn replay_lsn(&self) -> u64 {
        self.replay_lsn.load(Ordering::Acquire)
    }
    /// Last WAL position received from the primary (replicas).
    pub fn receive_lsn(&self) -> u64 {
        self.receive_lsn.load(Ordering::Relaxed)
    }
    /// Bytes of WAL the primary has that this replica has not replayed (0 if ahead).
    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }
    /// Replay delay (0 when caught up, even on an idle primary).
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_micros.load(Ordering::Relaxed))
    }
    /// Whether the time lag is known (false right after start when the replica is behind
    /// and has not replayed a transaction yet; `lag()` is then huge).
    pub fn lag_known(&self) -> bool {
        self.lag_micros.load(Ordering::Relaxed) != LAG_UNKNOWN
    }
    /// The last probe succeeded (for replicas: and there has been one).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
    /// `pg_is_in_recovery()` at the last successful probe.
    pub fn in_recovery(&self) -> bool {
        self.in_recovery.load(Ordering::Relaxed)
    }
    /// Completed probes (successful or not).
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }
    /// The last probe's error, if the last probe failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
    /// Reads routed here.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    pub fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
    /// In-flight server checkouts (for least_connections; the data path maintains it).
    pub fn active(&self) -> &AtomicUsize {
        &self.active
    }

    /// Monitor input: a probe succeeded and measured these positions.
    pub fn set_measured(
        &self,
        in_recovery: bool,
        replay: u64,
        receive: u64,
        lag_bytes: u64,
        lag: Option<Duration>,
    ) {
        self.in_recovery.store(in_recovery, Ordering::Relaxed);
        self.receive_lsn.store(receive, Ordering::Relaxed);
        self.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        let micros = lag.map_or(LAG_UNKNOWN, |d| (d.as_micros() as u64).min(LAG_UNKNOWN - 1));
        self.lag_micros.store(micros, Ordering::Relaxed);
        self.replay_lsn.store(replay, Ordering::Release);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        self.probes.fetch_add(1, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Release);
    }

    /// Monitor input: a probe failed (unreachable, timeout, server error).
    pub fn set_down(&self, error: String) {
        self.healthy.store(false, Ordering::Release);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
        self.probes.fetch_add(1, Ordering::Relaxed);
    }

    // ---- circuit breaker -------------------------------------------------------------

    /// Raw circuit state (an `Open` circuit past its deadline admits one trial).
    pub fn circuit(&self) -> Circuit {
        Circuit::from_u8(self.circuit.load(Ordering::Acquire))
    }

    /// Deadline of the ban (or of the outstanding trial), in [`now_ms`] time.
    pub fn open_until_ms(&self) -> u64 {
        self.open_until_ms.load(Ordering::Acquire)
    }

    /// Consecutive failures counted while closed.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Read-only: would a request be admitted now (closed, or a trial is available)?
    pub fn circuit_allows(&self, now_ms: u64) -> bool {
        self.circuit() == Circuit::Closed || now_ms >= self.open_until_ms()
    }

    /// Admits a request: always when closed; when the ban is over, exactly one caller gets
    /// the trial (the circuit becomes half-open; a trial that never reports back is replaced
    /// after another `ban_time`).
    pub fn try_admit(&self, settings: &ReplicationSettings, now_ms: u64) -> bool {
        if self.circuit() == Circuit::Closed {
            return true;
        }
        let until = self.open_until_ms();
        if now_ms < until {
            return false;
        }
        let trial_deadline = now_ms.saturating_add(settings.ban_time.as_millis() as u64);
        if self
            .open_until_ms
            .compare_exchange(until, trial_deadline, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // Closed meanwhile (a success): nothing to do, the request is simply admitted.
        let _ = self.circuit.compare_exchange(
            Circuit::Open as u8,
            Circuit::HalfOpen as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        true
    }

    /// Circuit input: a ban-worthy failure (see [`is_ban_worthy`]) on the data path or a
    /// failed monitor probe.
    pub fn record_failure(&self, settings: &ReplicationSettings) {
        self.record_failure_at(settings, now_ms());
    }

    pub fn record_failure_at(&self, settings: &ReplicationSettings, now_ms: u64) {
        if settings.ban_after_errors == 0 {
            return;
        }
        let until = now_ms.saturating_add(settings.ban_time.as_millis() as u64);
        match self.circuit() {
            Circuit::Closed => {
                let n = self
                    .failures
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                if n >= settings.ban_after_errors {
                    self.open(until);
                }
            }
            // The trial failed, or a failure after the ban ran out: ban again.
            Circuit::HalfOpen => self.open(until),
            Circuit::Open if now_ms >= self.open_until_ms() => self.open(until),
            // Still banned (e.g. a request that started before the ban): nothing changes.
            Circuit::Open => {}
        }
    }

    fn open(&self, until: u64) {
        // Deadline first, so a reader that sees Open never sees a stale deadline.
        self.open_until_ms.store(until, Ordering::Release);
        self.circuit.store(Circuit::Open as u8, Ordering::Release);
    }

    /// Circuit input: a request (or monitor probe) succeeded.
    pub fn record_success(&self) {
        self.record_success_at(now_ms());
    }

    pub fn record_success_at(&self, now_ms: u64) {
        match self.circuit() {
            Circuit::Closed => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
            Circuit::HalfOpen => self.close(),
            Circuit::Open if now_ms >= self.open_until_ms() => self.close(),
            // A success during the ban (a request from before it) does not lift it.
            Circuit::Open => {}
        }
    }

    fn close(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.circuit.store(Circuit::Closed as u8, Ordering::Release);
    }

    /// For SHOW REPLICAS / SHOW SERVERS: `"ok"`, `"lagging"` (over a lag bound),
    /// `"banned"` (circuit open), `"down"` (unreachable), `"promoted"` (a replica not in
    /// recovery) or, for a primary, `"recovery"` (it is a standby).
    pub fn state_label(&self, settings: &ReplicationSettings) -> &'static str {
        self.state_label_at(settings, now_ms())
    }

    pub fn state_label_at(&self, settings: &ReplicationSettings, now_ms: u64) -> &'static str {
        if !self.healthy() {
            "down"
        } else if !self.circuit_allows(now_ms) {
            "banned"
        } else if self.primary {
            if self.in_recovery() {
                "recovery"
            } else {
                "ok"
            }
        } else if !self.in_recovery() {
            "promoted"
        } else if (settings.max_lag_bytes > 0 && self.lag_bytes() > settings.max_lag_bytes)
            || (!settings.max_lag.is_zero() && self.lag() > settings.max_lag)
        {
            "lagging"
        } else {
            "ok"
        }
    }
}

/// One shard: its primary, its replicas and what the monitor last measured.
#[derive(Debug)]
pub struct ShardState {
    pub primary: Arc<BackendState>,
    pub replicas: Vec<Arc<BackendState>>,
    /// `pg_current_wal_lsn()` of the primary at the last successful probe.
    pub primary_lsn: AtomicU64,
    polls: AtomicU64,
    polled: Notify,
    waiters: AtomicUsize,
    wake_monitor: Arc<Notify>,
}

impl ShardState {
    pub fn new(primary_addr: String, replica_addrs: Vec<String>) -> ShardState {
        ShardState {
            primary: Arc::new(BackendState::primary(primary_addr)),
            replicas: replica_addrs
                .into_iter()
                .map(|a| Arc::new(BackendState::replica(a)))
                .collect(),
            primary_lsn: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            polled: Notify::new(),
            waiters: AtomicUsize::new(0),
            wake_monitor: Arc::new(Notify::new()),
        }
    }

    pub fn primary_lsn(&self) -> u64 {
        self.primary_lsn.load(Ordering::Acquire)
    }

    /// Completed monitor polls.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Acquire)
    }

    /// Monitor: a poll finished; wakes [`wait_for_lsn`](Self::wait_for_lsn) callers.
    pub(crate) fn poll_done(&self) {
        self.polls.fetch_add(1, Ordering::AcqRel);
        self.polled.notify_waiters();
    }

    /// Monitor: callers are waiting for a position (poll fast).
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Acquire) > 0
    }

    /// Monitor: wakes when a waiter arrives or this state is dropped (held without the state).
    pub(crate) fn wake_handle(&self) -> Arc<Notify> {
        self.wake_monitor.clone()
    }

    /// Some healthy, admitting replica has replayed `min_lsn`.
    pub fn lsn_reached(&self, min_lsn: u64) -> bool {
        let now = now_ms();
        self.replicas.iter().any(|r| {
            r.healthy() && r.in_recovery() && r.circuit_allows(now) && r.replay_lsn() >= min_lsn
        })
    }

    /// Waits up to `timeout` until some healthy replica has replayed `min_lsn` (woken by the
    /// monitor after each poll; the monitor polls fast while anyone waits). The caller then
    /// picks with `ReadRequirements { min_lsn, .. }`, which applies the other bounds.
    pub async fn wait_for_lsn(&self, min_lsn: u64, timeout: Duration) -> bool {
        if self.lsn_reached(min_lsn) {
            return true;
        }
        if timeout.is_zero() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _guard = WaiterGuard(&self.waiters);
        self.wake_monitor.notify_one();
        loop {
            let notified = self.polled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lsn_reached(min_lsn) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lsn_reached(min_lsn);
            }
        }
    }
}

impl Drop for ShardState {
    fn drop(&mut self) {
        // Let a sleeping monitor notice promptly that its shard is gone.
        self.wake_monitor.notify_one();
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The replication state of one logical database: its settings and shards.
#[derive(Debug)]
pub struct Replication {
    pub settings: ReplicationSettings,
    pub shards: Vec<Arc<ShardState>>,
}

impl Replication {
    pub fn new(settings: ReplicationSettings, shards: Vec<Arc<ShardState>>) -> Replication {
        Replication { settings, shards }
    }

    /// Every shard's primary is reachable (writes would not fail fast).
    pub fn primaries_healthy(&self) -> bool {
        self.shards.iter().all(|s| s.primary.healthy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReplicationSettings {
        ReplicationSettings {
            max_lag_bytes: 1000,
            max_lag: Duration::from_secs(1),
            check_interval: Duration::from_millis(100),
            ban_time: Duration::from_millis(5000),
            ban_after_errors: 3,
        }
    }

    #[test]
    fn ban_worthy_codes() {
        for c in [
            "08000", "08006", "08P01", "57P01", "57P02", "57P03", "53300", "53100",
        ] {
            assert!(is_ban_worthy(c), "{c}");
        }
        for c in [
            "42P01", "23505", "40001", "57014", "25006", "XX000", "28P01", "",
        ] {
            assert!(!is_ban_worthy(c), "{c}");
        }
    }

    #[test]
    fn circuit_opens_after_consecutive_failures() {
        let s = settings();
        let b = BackendState::replica("r:1".into());
        b.record_failure_at(&s, 100);
        b.record_failure_at(&s, 110);
        b.record_success_at(120); // breaks the streak
        b.record_failure_at(&s, 130);
        b.record_failure_at(&s, 140);
        assert_eq!(b.circuit(), Circuit::Closed);
        assert!(b.try_admit(&s, 140));
        b.record_failure_at(&s, 150);
        assert_eq!(b.circuit(), Circuit::Open);
        assert_eq!(b.open_until_ms(), 5150);
        assert!(!b.circuit_allows(5149));
        assert!(!b.try_admit(&s, 5149));
        // A success from a request that started before the ban does not lift it.
        b.record_success_at(1000);
        assert_eq!(b.circuit(), Circuit::Open);
        // Failures during the ban do not extend it.
        b.record_failure_at(&s, 2000);
        assert_eq!(b.open_until_ms(), 5150);
    }

    #[test]
    fn half_open_admits_exactly_one_trial() {
        let s = settings();
        let b = BackendState::replica("r:1".into());
        for t in 0..3 {
            b.record_failure_at(&s, t);
        }
        assert_eq!(b.circuit(), Circuit::Open);
        assert!(b.circuit_allows(5002));
        assert!(b.try_admit(&s, 5002));
        assert_eq!(b.circuit(), Circuit::HalfOpen);
        assert!(!b.try_admit(&s, 5003));
        assert!(!b.circuit_allows(5003));
        // Trial succeeds: closed.
        b.record_success_at(5004);
        assert_eq!(b.circuit(), Circuit::Closed);
        assert_eq!(b.failures(), 0);
        assert!(b.try_admit(&s, 5005));
    }

    #[test]
    fn failed_trial_reopens() {
        let s = settings();
        let b = BackendState::replica("r:1".into());
        for t in 0..3 {
            b.record_failure_at(&s, t);
        }
        assert!(b.try_admit(&s, 6000));
        b.record_failure_at(&s, 6001);
        assert_eq!(b.circuit(), Circuit::Open);
        assert_eq!(b.open_until_ms(), 11001);
        assert!(!b.try_admit(&s, 11000));
        assert!(b.try_admit(&s, 11001));
    }

    #[test]
    fn lost_trial_is_replaced_after_ban_time() {
        let s = settings();
        let b = BackendState::replica("r:1".into());
        for t in 0..3 {
            b.record_failure_at(&s, t);
        }
        assert!(b.try_admit(&s, 5002));
        assert!(!b.try_admit(&s, 10001));
        assert!(b.try_admit(&s, 10002));
        assert!(!b.try_admit(&s, 10003));
    }

    #[test]
    fn probe_success_after_ban_closes_and_failure_after_ban_reopens() {
        let s = settings();
        let b = BackendState::replica("r:1".into());
        for t in 0..3 {
            b.record_failure_at(&s, t);
        }
        b.record_failure_at(&s, 5002); // a probe failure after the ban ran out
        assert_eq!((b.circuit(), b.open_until_ms()), (Circuit::Open, 10002));
        b.record_success_at(10002);
        assert_eq!(b.circuit(), Circuit::Closed);
    }

    #[test]
    fn zero_ban_after_errors_disables_breaker() {
        let s = ReplicationSettings {
            ban_after_errors: 0,
            ..settings()
        };
        let b = BackendState::replica("r:1".into());
        for t in 0..100 {
            b.record_failure_at(&s, t);
        }
        assert_eq!(b.circuit(), Circuit::Closed);
    }

    #[test]
    fn labels() {
        let s = settings();
        let r = BackendState::replica("r:1".into());
        assert_eq!(r.state_label_at(&s, 0), "down");
        r.set_measured(true, 10, 10, 0, Some(Duration::ZERO));
        assert_eq!(r.state_label_at(&s, 0), "ok");
        r.set_measured(true, 10, 10, 5000, Some(Duration::ZERO));
        assert_eq!(r.state_label_at(&s, 0), "lagging");
        r.set_measured(true, 10, 10, 0, Some(Duration::from_secs(2)));
        assert_eq!(r.state_label_at(&s, 0), "lagging");
        r.set_measured(false, 10, 10, 0, Some(Duration::ZERO));
        assert_eq!(r.state_label_at(&s, 0), "promoted");
        r.set_measured(true, 10, 10, 0, Some(Duration::ZERO));
        for t in 0..3 {
            r.record_failure_at(&s, t);
        }
        assert_eq!(r.state_label_at(&s, 10), "banned");
        r.set_down("connection refused".into());
        assert_eq!(r.state_label_at(&s, 10), "down");
        assert_eq!(r.last_error().as_deref(), Some("connection refused"));

        let p = BackendState::primary("p:1".into());
        assert_eq!(p.state_label_at(&s, 0), "ok");
        p.set_measured(true, 1, 1, 0, Some(Duration::ZERO));
        assert_eq!(p.state_label_at(&s, 0), "recovery");
    }

    #[test]
    fn reasons_display() {
        assert_eq!(
            Ineligible::LagBytes(5).to_string(),
            "replica lagging by 5 bytes"
        );
        assert_eq!(
            Ineligible::BehindLsn {
                replay: 1,
                need: (1 << 32) | 0xA
            }
            .to_string(),
            "replica at 0/1 has not replayed 1/A yet"
        );
        assert_eq!(
            Ineligible::LagTime(Duration::from_micros(u64::MAX)).to_string(),
            "replica lagging by an unknown time"
        );
    }

    #[tokio::test]
    async fn wait_for_lsn_wakes_on_poll() {
        let shard = Arc::new(ShardState::new("p:1".into(), vec!["r:1".into()]));
        shard.replicas[0].set_measured(true, 100, 100, 0, Some(Duration::ZERO));
        assert!(shard.wait_for_lsn(100, Duration::ZERO).await);
        assert!(!shard.wait_for_lsn(200, Duration::from_millis(50)).await);
        let s2 = shard.clone();
        let waiter =
            tokio::spawn(async move { s2.wait_for_lsn(200, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(shard.has_waiters());
        shard.replicas[0].set_measured(true, 250, 250, 0, Some(Duration::ZERO));
        shard.poll_done();
        assert!(waiter.await.unwrap());
        assert!(!shard.has_waiters());
    }
}
