//! The scrape-time collector: builds metric families from the App's state (pools, clients,
//! routing runtimes, replica states, parse caches), the shared prepared-statement registry,
//! plus the process-wide counters and histograms of [`super`]. Nothing here runs on the data
//! path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, GaugeVec, Opts};

use crate::app::App;
use crate::config::Config;
use crate::pool::PoolKey;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

struct Spec {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
    Spec {
        name,
        help,
        kind: Kind::Gauge,
        labels,
    }
}

const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
    Spec {
        name,
        help,
        kind: Kind::Counter,
        labels,
    }
}

/// Labels of per-pool series: a pool is (user, database, backend); `role` is primary or
/// replica, `shard` the shard index.
const POOL: &[&str] = &["database", "user", "backend", "role", "shard"];
const POOL_STATE: &[&str] = &["database", "user", "backend", "role", "shard", "state"];
const BACKEND: &[&str] = &["database", "shard", "backend", "role"];
const REPLICA: &[&str] = &["database", "shard", "backend"];
const REPLICA_STATE: &[&str] = &["database", "shard", "backend", "state"];
const DB: &[&str] = &["database"];

/// Every family the collector produces (besides the two histograms).
const SPECS: &[Spec] = &[
    gauge("pgvane_info", "pgvane build information (always 1).", &["version"]),
    gauge("pgvane_start_time_seconds", "Start time of the process since the Unix epoch.", &[]),
    gauge(
        "pgvane_client_connections",
        "Logged-in clients by state: active (holds a server connection), waiting (for one), idle.",
        &["database", "user", "state"],
    ),
    gauge(
        "pgvane_pinned_clients",
        "Clients kept on their server connection by session state (transaction/statement mode), by reason.",
        &["database", "user", "reason"],
    ),
    gauge(
        "pgvane_client_sockets",
        "Client TCP connections open, including logins in progress and admin consoles.",
        &[],
    ),
    gauge("pgvane_max_client_conn", "Configured max_client_conn.", &[]),
    gauge(
        "pgvane_server_connections",
        "Server connections by state: active (checked out by a client) or idle (in the pool).",
        POOL_STATE,
    ),
    gauge("pgvane_pool_size", "Configured size of the pool (without the reserve).", POOL),
    gauge(
        "pgvane_pool_waiting_clients",
        "Clients waiting for a server connection of this pool right now.",
        POOL,
    ),
    gauge(
        "pgvane_pool_max_wait_seconds",
        "Longest completed wait for a server connection in the current and previous 15 s stats periods.",
        POOL,
    ),
    gauge("pgvane_pool_paused", "1 while the pool is paused (PAUSE).", POOL),
    counter("pgvane_transactions_total", "Transactions (server checkouts) served.", POOL),
    counter("pgvane_queries_total", "Queries served.", POOL),
    counter("pgvane_received_bytes_total", "Bytes received from clients.", POOL),
    counter("pgvane_sent_bytes_total", "Bytes sent to clients.", POOL),
    counter(
        "pgvane_transaction_time_seconds_total",
        "Time spent in transactions (server held by a client).",
        POOL,
    ),
    counter("pgvane_query_time_seconds_total", "Time spent in queries.", POOL),
    counter(
        "pgvane_pool_wait_time_seconds_total",
        "Time clients spent waiting for a server connection.",
        POOL,
    ),
    counter(
        "pgvane_server_assignments_total",
        "Times a server connection was handed to a client.",
        POOL,
    ),
    counter("pgvane_server_connects_total", "Server connections opened.", POOL),
    counter("pgvane_server_errors_total", "Errors counted against the pool.", POOL),
    gauge("pgvane_database_disabled", "1 while the database is disabled (DISABLE).", DB),
    gauge("pgvane_database_paused", "1 while the database is paused (PAUSE).", DB),
    counter(
        "pgvane_database_queries_total",
        "Client statements served (a statement that ran on several shards counts once; pgvane_queries_total counts it on every shard).",
        DB,
    ),
    counter(
        "pgvane_routed_total",
        "Statements/transactions routed, by destination: primary, replica, shard (one shard of a sharded database) or fanout (all shards).",
        &["database", "route"],
    ),
    counter(
        "pgvane_route_reasons_total",
        "Routing decisions by reason.",
        &["database", "reason"],
    ),
    counter(
        "pgvane_errors_total",
        "ErrorResponses sent to clients, by SQLSTATE class (first two characters).",
        &["database", "class"],
    ),
    gauge(
        "pgvane_backend_up",
        "1 when the last health probe of the backend succeeded (primaries are assumed up until a probe fails).",
        BACKEND,
    ),
    gauge(
        "pgvane_replica_lag_bytes",
        "WAL bytes the primary has that the replica has not replayed.",
        REPLICA,
    ),
    gauge(
        "pgvane_replica_lag_seconds",
        "Replay delay of the replica (NaN while unknown).",
        REPLICA,
    ),
    gauge(
        "pgvane_replica_state",
        "1 for the replica's current state: ok, lagging, banned, down or promoted.",
        REPLICA_STATE,
    ),
    counter("pgvane_replica_reads_total", "Reads routed to the replica.", REPLICA),
    counter(
        "pgvane_parse_cache_hits_total",
        "Statement analyses answered from the parse cache.",
        DB,
    ),
    counter(
        "pgvane_parse_cache_misses_total",
        "Statements that had to be parsed.",
        DB,
    ),
    counter(
        "pgvane_prepared_cache_hits_total",
        "Prepared statements already prepared on the server a client got.",
        &[],
    ),
    counter(
        "pgvane_prepared_cache_misses_total",
        "Prepared statements that had to be prepared on the server a client got.",
        &[],
    ),
    counter(
        "pgvane_prepared_cache_evictions_total",
        "Prepared statements evicted from a server connection's cache.",
        &[],
    ),
    gauge(
        "pgvane_prepared_statements",
        "Shared prepared statements pgvane knows: those a client has open or a server connection holds.",
        &[],
    ),
    counter(
        "pgvane_prepared_evictions_total",
        "Shared prepared statements forgotten because no client had them open and no server connection held them any more.",
        &[],
    ),
    counter(
        "pgvane_config_reloads_total",
        "Configuration reloads (SIGHUP, RELOAD, SET) by result: applied or rejected.",
        &["result"],
    ),
    gauge(
        "pgvane_config_last_reload_successful",
        "1 when the last configuration reload was applied, 0 when it was rejected.",
        &[],
    ),
];

/// Where a pool's backend sits in its database: (shard index, "primary" | "replica").
pub fn backend_place(cfg: &Config, key: &PoolKey) -> Option<(usize, &'static str)> {
    let db = cfg.database(&key.database)?;
    let same = |b: &crate::config::Backend| {
        b.host == key.host && b.port == key.port && b.dbname_or(&db.name) == key.dbname
    };
    for (i, sh) in db.shards.iter().enumerate() {
        if same(&sh.primary) {
            return Some((i, "primary"));
        }
        if sh.replicas.iter().any(same) {
            return Some((i, "replica"));
        }
    }
    None
}

/// Reads the App at scrape time. Holds the App weakly (the metrics server may outlive it in
/// tests).
pub struct AppCollector {
    app: Weak<App>,
    descs: Vec<Desc>,
}

impl AppCollector {
    pub fn new(app: &Arc<App>) -> AppCollector {
        let mut descs: Vec<Desc> = SPECS
            .iter()
            .filter_map(|s| {
                Desc::new(
                    s.name.to_string(),
                    s.help.to_string(),
                    s.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .ok()
            })
            .collect();
        let h = super::histograms();
        descs.extend(h.transaction.desc().into_iter().cloned());
        descs.extend(h.pool_wait.desc().into_iter().cloned());
        AppCollector {
            app: Arc::downgrade(app),
            descs,
        }
    }
}

enum Vec2 {
    Gauge(GaugeVec),
    Counter(CounterVec),
}

/// Fresh vectors for one scrape.
struct Scrape {
    vecs: Vec<(&'static str, Vec2)>,
}

impl Scrape {
    fn new() -> Scrape {
        let vecs = SPECS
            .iter()
            .filter_map(|s| {
                let opts = Opts::new(s.name, s.help);
                let v = match s.kind {
                    Kind::Gauge => Vec2::Gauge(GaugeVec::new(opts, s.labels).ok()?),
                    Kind::Counter => Vec2::Counter(CounterVec::new(opts, s.labels).ok()?),
                };
                Some((s.name, v))
            })
            .collect();
        Scrape { vecs }
    }

    /// Set a gauge or add to a counter (counters are fresh each scrape, so this sets it).
    fn put(&self, name: &str, labels: &[&str], v: f64) {
        let Some((_, vec)) = self.vecs.iter().find(|(n, _)| *n == name) else {
            debug_assert!(false, "unknown metric {name}");
            return;
        };
        match vec {
            Vec2::Gauge(g) => {
                if let Ok(m) = g.get_metric_with_label_values(labels) {
                    m.add(v);
                }
            }
            Vec2::Counter(c) => {
                if let Ok(m) = c.get_metric_with_label_values(labels) {
                    if v > 0.0 {
                        m.inc_by(v);
                    }
                }
            }
        }
    }

    fn families(self) -> Vec<MetricFamily> {
        self.vecs
            .into_iter()
            .map(|(_, v)| match v {
                Vec2::Gauge(g) => g.collect(),
                Vec2::Counter(c) => c.collect(),
            })
            .flat_map(|f| f.into_iter())
            .collect()
    }
}

const US: f64 = 1_000_000.0;

impl Collector for AppCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = Scrape::new();
        let h = super::histograms();
        let Some(app) = self.app.upgrade() else {
            return Vec::new();
        };
        let cfg = app.config();
        s.put("pgvane_info", &[env!("CARGO_PKG_VERSION")], 1.0);
        if let Ok(d) = app.admin.started_at().duration_since(std::time::UNIX_EPOCH) {
            s.put("pgvane_start_time_seconds", &[], d.as_secs_f64());
        }
        let sockets = app.client_count() + app.pending_login_count();
        s.put("pgvane_client_sockets", &[], sockets as f64);
        s.put(
            "pgvane_max_client_conn",
            &[],
            cfg.general.max_client_conn as f64,
        );

        // Clients by (database, user, state); every pair with a pool or a client gets all
        // three states so series do not appear and vanish.
        let mut clients: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
        let mut pinned: BTreeMap<
            (String, String),
            [u64; crate::client::tracker::state::PIN_REASONS.len()],
        > = BTreeMap::new();
        for c in app.clients_snapshot() {
            let p = c.pinned.load(Ordering::Relaxed) as usize;
            let counts = pinned
                .entry((c.database.clone(), c.user.clone()))
                .or_default();
            if let Some(n) = p.checked_sub(1).and_then(|i| counts.get_mut(i)) {
                *n += 1;
            }
            let slot = match c.state.load(Ordering::Relaxed) {
                crate::app::CLIENT_ACTIVE => 0,
                crate::app::CLIENT_WAITING => 1,
                _ => 2,
            };
            clients
                .entry((c.database.clone(), c.user.clone()))
                .or_default()[slot] += 1;
        }

        for pool in app.all_pools() {
            let k = &pool.key;
            clients
                .entry((k.database.clone(), k.user.clone()))
                .or_default();
            pinned
                .entry((k.database.clone(), k.user.clone()))
                .or_default();
            let (shard, role) = backend_place(&cfg, k).unwrap_or((0, "unknown"));
            let backend = format!("{}:{}", k.host, k.port);
            let shard = shard.to_string();
            let l: [&str; 5] = [&k.database, &k.user, &backend, role, &shard];
            let st = &pool.stats;
            let active = st.active.load(Ordering::Relaxed);
            let idle = pool.idle_count();
            let with_state = |state: &'static str| -> [&str; 6] {
                [&k.database, &k.user, &backend, role, &shard, state]
            };
            s.put(
                "pgvane_server_connections",
                &with_state("active"),
                active as f64,
            );
            s.put(
                "pgvane_server_connections",
                &with_state("idle"),
                idle as f64,
            );
            s.put("pgvane_pool_size", &l, pool.settings().size as f64);
            s.put(
                "pgvane_pool_waiting_clients",
                &l,
                st.waiting.load(Ordering::Relaxed) as f64,
            );
            s.put(
                "pgvane_pool_max_wait_seconds",
                &l,
                app.admin.max_wait_us(&pool) as f64 / US,
            );
            s.put("pgvane_pool_paused", &l, pool.is_paused() as u8 as f64);
            let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
            s.put("pgvane_transactions_total", &l, c(&st.xact_count));
            s.put("pgvane_queries_total", &l, c(&st.query_count));
            s.put("pgvane_received_bytes_total", &l, c(&st.bytes_received));
            s.put("pgvane_sent_bytes_total", &l, c(&st.bytes_sent));
            s.put(
                "pgvane_transaction_time_seconds_total",
                &l,
                c(&st.xact_time_us) / US,
            );
            s.put(
                "pgvane_query_time_seconds_total",
                &l,
                c(&st.query_time_us) / US,
            );
            s.put(
                "pgvane_pool_wait_time_seconds_total",
                &l,
                c(&st.wait_time_us) / US,
            );
            s.put("pgvane_server_assignments_total", &l, c(&st.checkouts));
            s.put("pgvane_server_connects_total", &l, c(&st.total_connects));
            s.put("pgvane_server_errors_total", &l, c(&st.errors));
        }
        for ((db, user), n) in &clients {
            for (i, state) in ["active", "waiting", "idle"].iter().enumerate() {
                s.put("pgvane_client_connections", &[db, user, state], n[i] as f64);
            }
        }
        for ((db, user), n) in &pinned {
            for (i, reason) in crate::client::tracker::state::PIN_REASONS
                .iter()
                .enumerate()
            {
                s.put("pgvane_pinned_clients", &[db, user, reason], n[i] as f64);
            }
        }

        for db in &cfg.databases {
            let name = db.name.as_str();
            s.put(
                "pgvane_database_disabled",
                &[name],
                app.is_disabled(name) as u8 as f64,
            );
            s.put(
                "pgvane_database_paused",
                &[name],
                app.admin.is_paused(name) as u8 as f64,
            );
            // Histogram children exist for every database, so the families are always there.
            let _ = h.transaction.with_label_values(&[name]);
            let _ = h.pool_wait.with_label_values(&[name]);
        }

        for (db, t) in crate::admin::stats::totals_by_db(&app) {
            s.put(
                "pgvane_database_queries_total",
                &[&db],
                t.query_count as f64,
            );
        }
        for rt in app.all_dbs() {
            let name = rt.name.as_str();
            let st = &rt.stats;
            for (route, v) in [
                ("primary", &st.primary),
                ("replica", &st.replica),
                ("shard", &st.shard),
                ("fanout", &st.fanout),
            ] {
                s.put(
                    "pgvane_routed_total",
                    &[name, route],
                    v.load(Ordering::Relaxed) as f64,
                );
            }
            for (reason, n) in st.reasons() {
                s.put("pgvane_route_reasons_total", &[name, reason], n as f64);
            }
            s.put(
                "pgvane_parse_cache_hits_total",
                &[name],
                rt.cache.hits() as f64,
            );
            s.put(
                "pgvane_parse_cache_misses_total",
                &[name],
                rt.cache.misses() as f64,
            );
            for (i, sh) in rt.shards.iter().enumerate() {
                let shard = i.to_string();
                let p = &sh.state.primary;
                s.put(
                    "pgvane_backend_up",
                    &[name, &shard, &p.addr, "primary"],
                    p.healthy() as u8 as f64,
                );
                for r in &sh.state.replicas {
                    let addr = r.addr.as_str();
                    s.put(
                        "pgvane_backend_up",
                        &[name, &shard, addr, "replica"],
                        r.healthy() as u8 as f64,
                    );
                    s.put(
                        "pgvane_replica_lag_bytes",
                        &[name, &shard, addr],
                        r.lag_bytes() as f64,
                    );
                    let lag = if r.lag_known() {
                        r.lag().as_secs_f64()
                    } else {
                        f64::NAN
                    };
                    s.put("pgvane_replica_lag_seconds", &[name, &shard, addr], lag);
                    let current = r.state_label(&rt.repl);
                    for state in ["ok", "lagging", "banned", "down", "promoted"] {
                        s.put(
                            "pgvane_replica_state",
                            &[name, &shard, addr, state],
                            (state == current) as u8 as f64,
                        );
                    }
                    s.put(
                        "pgvane_replica_reads_total",
                        &[name, &shard, addr],
                        r.reads() as f64,
                    );
                }
            }
        }

        for (db, class, n) in super::error_counts() {
            s.put("pgvane_errors_total", &[&db, &class], n as f64);
        }
        let (hits, misses, evictions) = super::prepared_counts();
        s.put("pgvane_prepared_cache_hits_total", &[], hits as f64);
        s.put("pgvane_prepared_cache_misses_total", &[], misses as f64);
        s.put(
            "pgvane_prepared_cache_evictions_total",
            &[],
            evictions as f64,
        );
        let registry = crate::client::prepared::registry();
        s.put("pgvane_prepared_statements", &[], registry.len() as f64);
        s.put(
            "pgvane_prepared_evictions_total",
            &[],
            registry.evictions() as f64,
        );
        // Both results are always present (at 0) so rate() works from the first reload.
        let (ok, failed, last_ok) = super::reload_counts();
        s.put("pgvane_config_reloads_total", &["applied"], ok as f64);
        s.put("pgvane_config_reloads_total", &["rejected"], failed as f64);
        s.put(
            "pgvane_config_last_reload_successful",
            &[],
            last_ok as u8 as f64,
        );

        let mut out = s.families();
        out.extend(h.transaction.collect());
        out.extend(h.pool_wait.collect());
        out
    }
}
