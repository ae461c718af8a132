//! SHOW STATS bookkeeping: per-database totals summed over the pools' counters, averages over
//! the last stats period (15 s, like PgBouncer's `stats_period`), and the per-pool longest
//! wait of the current and previous periods (`maxwait`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::app::App;
use crate::pool::{Pool, PoolKey, PoolStats};

/// Length of a stats period (averages are over the last complete one).
pub const STATS_PERIOD: Duration = Duration::from_secs(15);

/// Counters of one database, summed over its pools.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    /// Microseconds.
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
    pub assignments: u64,
    pub errors: u64,
}

impl Totals {
    fn add(&mut self, s: &PoolStats) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let extra = l(&s.fanout_extra);
        self.xact_count += l(&s.xact_count).saturating_sub(extra);
        self.query_count += l(&s.query_count).saturating_sub(extra);
        self.received += l(&s.bytes_received);
        self.sent += l(&s.bytes_sent);
        self.xact_time += l(&s.xact_time_us);
        self.query_time += l(&s.query_time_us);
        self.wait_time += l(&s.wait_time_us);
        self.assignments += l(&s.checkouts);
        self.errors += l(&s.errors);
    }
}

/// Averages over one stats period (PgBouncer's meanings): counts and bytes per second; times
/// in microseconds per transaction / query / server assignment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Averages {
    pub xact_count: u64,
    pub query_count: u64,
    pub recv: u64,
    pub sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
}

fn averages(prev: &Totals, now: &Totals, period: Duration) -> Averages {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let secs = period.as_secs_f64().max(0.001);
    let per_sec = |a, b| (d(a, b) as f64 / secs).round() as u64;
    let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
    let xacts = d(prev.xact_count, now.xact_count);
    let queries = d(prev.query_count, now.query_count);
    let assignments = d(prev.assignments, now.assignments);
    Averages {
        xact_count: per_sec(prev.xact_count, now.xact_count),
        query_count: per_sec(prev.query_count, now.query_count),
        recv: per_sec(prev.received, now.received),
        sent: per_sec(prev.sent, now.sent),
        xact_time: per(d(prev.xact_time, now.xact_time), xacts),
        query_time: per(d(prev.query_time, now.query_time), queries),
        wait_time: per(d(prev.wait_time, now.wait_time), assignments),
    }
}

/// The state kept between stats periods.
#[derive(Debug, Default)]
pub struct Window {
    last: HashMap<String, Totals>,
    last_at: Option<Instant>,
    averages: HashMap<String, Averages>,
    /// Longest wait per pool in the previous period.
    max_wait: HashMap<PoolKey, u64>,
}

/// Totals of every configured database (zeros if it has no pools yet) and of databases that
/// only draining pools still use.
pub fn totals_by_db(app: &App) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = app
        .config()
        .databases
        .iter()
        .map(|d| (d.name.clone(), Totals::default()))
        .collect();
    for p in app.all_pools() {
        out.entry(p.key.database.clone()).or_default().add(&p.stats);
    }
    out
}

impl super::AdminState {
    /// Averages of the last complete stats period (zeros before the first one ends).
    pub fn averages(&self, db: &str) -> Averages {
        self.window
            .lock()
            .ok()
            .and_then(|w| w.averages.get(db).copied())
            .unwrap_or_default()
    }

    /// Longest completed wait for a server of `pool` in this and the previous stats period.
    pub fn max_wait_us(&self, pool: &Pool) -> u64 {
        let now = pool.stats.max_wait_us.load(Ordering::Relaxed);
        let prev = self
            .window
            .lock()
            .ok()
            .and_then(|w| w.max_wait.get(&pool.key).copied())
            .unwrap_or(0);
        now.max(prev)
    }
}

/// Close a stats period: compute averages, roll the per-pool maximum waits over.
pub fn tick(app: &App) {
    let now = totals_by_db(app);
    let pools = app.all_pools();
    let Ok(mut w) = app.admin.window.lock() else {
        return;
    };
    let at = Instant::now();
    if let Some(prev_at) = w.last_at {
        let period = at.duration_since(prev_at);
        let avgs: HashMap<String, Averages> = now
            .iter()
            .map(|(db, t)| {
                let prev = w.last.get(db).copied().unwrap_or_default();
                (db.clone(), averages(&prev, t, period))
            })
            .collect();
        w.averages = avgs;
    }
    w.last = now.into_iter().collect();
    w.last_at = Some(at);
    w.max_wait = pools
        .iter()
        .map(|p| {
            (
                p.key.clone(),
                p.stats.max_wait_us.swap(0, Ordering::Relaxed),
            )
        })
        .collect();
}

/// Run [`tick`] every [`STATS_PERIOD`] while the App lives.
pub fn spawn(app: &Arc<App>) {
    let weak: Weak<App> = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(STATS_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(app) = weak.upgrade() else { return };
            tick(&app);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_follow_pgbouncer_meanings() {
        let prev = Totals {
            xact_count: 10,
            query_count: 20,
            received: 1000,
            sent: 2000,
            xact_time: 1000,
            query_time: 1000,
            wait_time: 0,
            assignments: 10,
            errors: 0,
        };
        let now = Totals {
            xact_count: 40,
            query_count: 80,
            received: 4000,
            sent: 8000,
            xact_time: 31_000,
            query_time: 13_000,
            wait_time: 3000,
            assignments: 40,
            errors: 0,
        };
        let a = averages(&prev, &now, Duration::from_secs(15));
        assert_eq!(a.xact_count, 2); // 30 per 15 s
        assert_eq!(a.query_count, 4);
        assert_eq!(a.recv, 200);
        assert_eq!(a.sent, 400);
        assert_eq!(a.xact_time, 1000); // 30 ms over 30 transactions
        assert_eq!(a.query_time, 200);
        assert_eq!(a.wait_time, 100);
        // Counters that went down (pools removed by a reload) give zeros, not garbage.
        let z = averages(&now, &prev, Duration::from_secs(15));
        assert_eq!(z, Averages::default());
    }
}
