//! Prometheus metrics: the few values observed on the hot path (transaction durations, pool
//! waits, errors by SQLSTATE class, prepared-statement cache events) and the `/metrics`,
//! `/healthz`, `/readyz` HTTP endpoint (`[general] metrics_addr`).
//!
//! Owns: the process-wide histograms and counters below, and [`collector`], which reads every
//! other number (pool and client gauges, route counters, replica lag, parse cache) from the
//! [`App`](crate::app::App) at scrape time, so sessions pay nothing for them.
//!
//! Must not: take a lock per query. `observe_transaction` uses a per-thread cache of histogram
//! children (no label lookup after the first call on a thread); the counters are atomics.

mod collector;
mod http;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::LocalKey;

use prometheus::{Histogram, HistogramOpts, HistogramVec};

pub use collector::{backend_place, AppCollector};
pub use http::{readiness, render, serve};

/// Upper bounds (seconds) of the duration histograms: 100 µs .. 60 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Histograms observed on the data path (shared by every registry that serves them).
pub(crate) struct Histograms {
    pub transaction: HistogramVec,
    pub pool_wait: HistogramVec,
}

pub(crate) fn histograms() -> &'static Histograms {
    static H: OnceLock<Histograms> = OnceLock::new();
    H.get_or_init(|| {
        let make = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                &["database"],
            )
            .expect("valid histogram options")
        };
        Histograms {
            transaction: make(
                "pgvane_transaction_duration_seconds",
                "Time a client held a server connection: one transaction in transaction mode, one statement in statement mode, the session in session mode.",
            ),
            pool_wait: make(
                "pgvane_pool_wait_duration_seconds",
                "Time a client waited for a free server connection (checkouts that had to wait).",
            ),
        }
    })
}

type Cache = RefCell<HashMap<Box<str>, Histogram>>;

thread_local! {
    static TRANSACTION_CACHE: Cache = RefCell::new(HashMap::new());
    static WAIT_CACHE: Cache = RefCell::new(HashMap::new());
}

/// Observe `us` microseconds on the child of `vec` for `database`, found through a per-thread
/// cache (a label lookup happens once per database per worker thread).
fn observe(cache: &'static LocalKey<Cache>, vec: &HistogramVec, database: &str, us: u64) {
    let secs = us as f64 / 1_000_000.0;
    let done = cache.try_with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return false;
        };
        if let Some(h) = c.get(database) {
            h.observe(secs);
            return true;
        }
        if c.len() >= 1024 {
            c.clear(); // databases come and go with reloads; keep the cache bounded
        }
        let h = vec.with_label_values(&[database]);
        h.observe(secs);
        c.insert(database.into(), h);
        true
    });
    if done != Ok(true) {
        vec.with_label_values(&[database]).observe(secs);
    }
}

/// One transaction of `us` microseconds finished on `database` (called at every release).
pub fn observe_transaction(database: &str, us: u64) {
    observe(&TRANSACTION_CACHE, &histograms().transaction, database, us);
}

/// A client waited `us` microseconds for a server connection of `database` (call only when a
/// checkout had to wait).
pub fn observe_wait(database: &str, us: u64) {
    observe(&WAIT_CACHE, &histograms().pool_wait, database, us);
}

// ---- errors by SQLSTATE class ------------------------------------------------------------

/// SQLSTATE classes are two characters of [0-9A-Z]; one more slot for malformed codes.
const CLASS_SLOTS: usize = 36 * 36 + 1;

struct ErrorClasses(Box<[AtomicU64]>);

impl ErrorClasses {
    fn new() -> ErrorClasses {
        ErrorClasses((0..CLASS_SLOTS).map(|_| AtomicU64::new(0)).collect())
    }
}

fn class_digit(c: u8) -> Option<usize> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as usize),
        b'A'..=b'Z' => Some((c - b'A') as usize + 10),
        b'a'..=b'z' => Some((c - b'a') as usize + 10),
        _ => None,
    }
}

fn class_index(sqlstate: &str) -> usize {
    let b = sqlstate.as_bytes();
    match (
        b.first().copied().and_then(class_digit),
        b.get(1).copied().and_then(class_digit),
    ) {
        (Some(a), Some(c)) if b.len() == 5 => a * 36 + c,
        _ => CLASS_SLOTS - 1,
    }
}

fn class_name(i: usize) -> String {
    if i == CLASS_SLOTS - 1 {
        return "unknown".to_string();
    }
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut s = String::with_capacity(2);
    s.push(DIGITS[i / 36] as char);
    s.push(DIGITS[i % 36] as char);
    s
}

fn error_map() -> &'static RwLock<HashMap<String, Arc<ErrorClasses>>> {
    static M: OnceLock<RwLock<HashMap<String, Arc<ErrorClasses>>>> = OnceLock::new();
    M.get_or_init(|| RwLock::new(HashMap::new()))
}

/// An ErrorResponse with `sqlstate` went to a client of `database`.
pub fn count_error(database: &str, sqlstate: &str) {
    let i = class_index(sqlstate);
    if let Ok(m) = error_map().read() {
        if let Some(c) = m.get(database) {
            c.0[i].fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    if let Ok(mut m) = error_map().write() {
        m.entry(database.to_string())
            .or_insert_with(|| Arc::new(ErrorClasses::new()))
            .0[i]
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// (database, SQLSTATE class, count) for every class seen.
pub fn error_counts() -> Vec<(String, String, u64)> {
    let Ok(m) = error_map().read() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (db, c) in m.iter() {
        for (i, n) in c.0.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                out.push((db.clone(), class_name(i), n));
            }
        }
    }
    out.sort();
    out
}

// ---- prepared-statement cache and reloads ------------------------------------------------

static PREPARED_HITS: AtomicU64 = AtomicU64::new(0);
static PREPARED_MISSES: AtomicU64 = AtomicU64::new(0);
static PREPARED_EVICTIONS: AtomicU64 = AtomicU64::new(0);
static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);
static LAST_RELOAD_OK: AtomicU64 = AtomicU64::new(1);

/// A client's prepared statement was already prepared on its server (`hit`) or had to be
/// prepared there (`!hit`).
pub fn count_prepared(hit: bool) {
    if hit {
        PREPARED_HITS.fetch_add(1, Ordering::Relaxed);
    } else {
        PREPARED_MISSES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Batched form of [`count_prepared`], for sessions that count locally.
pub fn count_prepared_n(hits: u64, misses: u64) {
    if hits > 0 {
        PREPARED_HITS.fetch_add(hits, Ordering::Relaxed);
    }
    if misses > 0 {
        PREPARED_MISSES.fetch_add(misses, Ordering::Relaxed);
    }
}

/// A server connection's prepared-statement LRU evicted a statement.
pub fn count_prepared_eviction() {
    PREPARED_EVICTIONS.fetch_add(1, Ordering::Relaxed);
}

/// A configuration reload (SIGHUP, RELOAD, SET) was applied (`ok`) or rejected.
pub fn count_reload(ok: bool) {
    if ok {
        RELOADS_OK.fetch_add(1, Ordering::Relaxed);
    } else {
        RELOADS_FAILED.fetch_add(1, Ordering::Relaxed);
    }
    LAST_RELOAD_OK.store(ok as u64, Ordering::Relaxed);
}

/// (hits, misses, evictions) of the prepared-statement caches.
pub fn prepared_counts() -> (u64, u64, u64) {
    (
        PREPARED_HITS.load(Ordering::Relaxed),
        PREPARED_MISSES.load(Ordering::Relaxed),
        PREPARED_EVICTIONS.load(Ordering::Relaxed),
    )
}

/// (applied, rejected, last one applied).
pub fn reload_counts() -> (u64, u64, bool) {
    (
        RELOADS_OK.load(Ordering::Relaxed),
        RELOADS_FAILED.load(Ordering::Relaxed),
        LAST_RELOAD_OK.load(Ordering::Relaxed) == 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        assert_eq!(class_name(class_index("42P01")), "42");
        assert_eq!(class_name(class_index("08006")), "08");
        assert_eq!(class_name(class_index("XX000")), "XX");
        assert_eq!(class_name(class_index("0A000")), "0A");
        assert_eq!(class_name(class_index("")), "unknown");
        assert_eq!(class_name(class_index("4")), "unknown");
        assert_eq!(class_name(class_index("#####")), "unknown");
    }

    #[test]
    fn errors_are_counted_per_database_and_class() {
        count_error("unit_db", "42P01");
        count_error("unit_db", "42601");
        count_error("unit_db", "08006");
        let c = error_counts();
        let get = |class: &str| {
            c.iter()
                .find(|(d, k, _)| d == "unit_db" && k == class)
                .map(|x| x.2)
        };
        assert_eq!(get("42"), Some(2));
        assert_eq!(get("08"), Some(1));
    }

    #[test]
    fn transaction_histogram_uses_cached_children() {
        observe_transaction("unit_hist", 1500);
        observe_transaction("unit_hist", 2500);
        let h = histograms().transaction.with_label_values(&["unit_hist"]);
        assert_eq!(h.get_sample_count(), 2);
        assert!((h.get_sample_sum() - 0.004).abs() < 1e-9);
    }
}
