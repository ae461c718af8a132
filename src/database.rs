//! Per-database runtime shared by every session of a logical database: the replication
//! state of each shard (fed by the monitor), routing settings, the sharded-table map, and the
//! control-plane lookups routing needs (function volatility, a table's column order).
//!
//! Must not: forward client traffic. Sessions read this state; the monitor and the control
//! connection (tokio-postgres, application_name `pgvane_monitor`) write it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Database, LoadBalancing, ReadAfterWrite, Routing, ShardKeyType, User};
use crate::replication::{self, Balancing, MonitorTarget, ReplicationSettings, ShardState};
use crate::router::{AnalysisCache, FunctionCatalog};
use crate::sharding::hash::KeyType;
use crate::sharding::key::ShardedTable;

pub struct ShardRuntime {
    pub state: Arc<ShardState>,
    pub weights: Vec<u32>,
    pub rr: AtomicUsize,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for ShardRuntime {
    fn drop(&mut self) {
        if let Ok(mut m) = self.monitor.lock() {
            if let Some(h) = m.take() {
                h.abort();
            }
        }
    }
}

/// Every routing-reason label (statement reasons from the classifier and decision reasons
/// from the session); counted in a fixed table so the hot path takes no lock.
pub const REASON_LABELS: &[&str] = &[
    "read",
    "transaction_control",
    "session",
    "write_statement",
    "locking_clause",
    "volatile_function",
    "write_function",
    "writable_cte",
    "select_into",
    "ddl",
    "copy_from",
    "utility",
    "parse_failure",
    "hint",
    "session_route",
    "split_off",
    "write_transaction",
    "read_only_transaction",
    "read_your_writes_window",
    "read_your_writes_lsn",
    "no_healthy_replica",
    "no_replicas",
    "replica_unavailable",
    "replica_failed_retry",
    "other",
];

/// Route counters per database (read by the admin console and metrics).
pub struct RouteStats {
    pub primary: AtomicU64,
    pub replica: AtomicU64,
    pub shard: AtomicU64,
    pub fanout: AtomicU64,
    reasons: Vec<AtomicU64>,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            primary: AtomicU64::new(0),
            replica: AtomicU64::new(0),
            shard: AtomicU64::new(0),
            fanout: AtomicU64::new(0),
            reasons: REASON_LABELS.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl RouteStats {
    pub fn count_reason(&self, label: &'static str) {
        let i = REASON_LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(REASON_LABELS.len() - 1);
        self.reasons[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (label, count) for every reason counted at least once.
    pub fn reasons(&self) -> Vec<(&'static str, u64)> {
        REASON_LABELS
            .iter()
            .zip(self.reasons.iter())
            .map(|(l, n)| (*l, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

pub struct DbRuntime {
    pub name: String,
    pub routing: Routing,
    pub shards: Vec<ShardRuntime>,
    pub sharded_tables: Vec<ShardedTable>,
    pub repl: ReplicationSettings,
    pub catalog: FunctionCatalog,
    /// Statement analyses by normalized shape (per database: shard plans depend on its tables).
    pub cache: AnalysisCache,
    pub stats: RouteStats,
    /// Round robin over shards for reads of unsharded tables.
    pub any_rr: AtomicUsize,
    columns: Mutex<HashMap<String, Vec<String>>>,
    control: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    control_target: MonitorTarget,
}

/// Matching table names from statements against the sharded-table list.
pub trait TableName {
    /// `name` as the analysis reports it ("orders" or "public.orders", lower case).
    fn matches(&self, name: &str) -> bool;
    /// "schema.table" or "table", for catalog lookups.
    fn qualified(&self) -> String;
}

impl TableName for ShardedTable {
    fn matches(&self, name: &str) -> bool {
        let name = name.trim_matches('"');
        match name.rsplit_once('.') {
            Some((schema, table)) => {
                table.trim_matches('"') == self.table
                    && self
                        .schema
                        .as_deref()
                        .is_none_or(|s| s == schema.trim_matches('"'))
            }
            None => name == self.table,
        }
    }

    fn qualified(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

pub fn key_type(t: ShardKeyType) -> KeyType {
    match t {
        ShardKeyType::Smallint => KeyType::Int2,
        ShardKeyType::Integer => KeyType::Int4,
        ShardKeyType::Bigint => KeyType::Int8,
        ShardKeyType::Text | ShardKeyType::Varchar => KeyType::Text,
        ShardKeyType::Uuid => KeyType::Uuid,
    }
}

pub fn balancing(b: LoadBalancing) -> Balancing {
    match b {
        LoadBalancing::RoundRobin => Balancing::RoundRobin,
        LoadBalancing::Random => Balancing::Random,
        LoadBalancing::LeastConnections => Balancing::LeastConnections,
    }
}

impl DbRuntime {
    /// Build the runtime for `db` and start the replication monitors (as `user`).
    pub fn start(db: &Database, user: &User) -> Arc<DbRuntime> {
        let r = &db.routing;
        let repl = ReplicationSettings {
            max_lag_bytes: r.max_replica_lag_bytes,
            max_lag: r.max_replica_lag,
            check_interval: r.lag_check_interval,
            ban_time: r.replica_ban_time,
            ban_after_errors: r.ban_after_errors,
        };
        let password = user
            .server_password
            .clone()
            .or_else(|| user.password.clone());
        let target = |b: &crate::config::Backend| MonitorTarget {
            host: b.host.clone(),
            port: b.port,
            user: user.server_user().to_string(),
            password: password.clone(),
            dbname: b.dbname_or(&db.name).to_string(),
        };
        let shards = db
            .shards
            .iter()
            .map(|sh| {
                let state = Arc::new(ShardState::new(
                    sh.primary.addr(),
                    sh.replicas.iter().map(|b| b.addr()).collect(),
                ));
                let monitor = (!sh.replicas.is_empty() && r.read_write_split).then(|| {
                    replication::spawn_monitor(
                        state.clone(),
                        target(&sh.primary),
                        sh.replicas.iter().map(target).collect(),
                        repl.clone(),
                    )
                });
                ShardRuntime {
                    state,
                    weights: sh.replicas.iter().map(|b| b.weight).collect(),
                    rr: AtomicUsize::new(0),
                    monitor: Mutex::new(monitor),
                }
            })
            .collect();
        let sharded_tables = db
            .sharded_tables
            .iter()
            .map(|t| {
                let (schema, table) = match t.table.rsplit_once('.') {
                    Some((s, t)) => (Some(s.to_ascii_lowercase()), t.to_ascii_lowercase()),
                    None => (None, t.table.to_ascii_lowercase()),
                };
                ShardedTable {
                    schema,
                    table,
                    column: t.column.to_ascii_lowercase(),
                    key_type: key_type(t.r#type),
                }
            })
            .collect();
        Arc::new(DbRuntime {
            name: db.name.clone(),
            routing: db.routing.clone(),
            shards,
            sharded_tables,
            repl,
            catalog: FunctionCatalog::default(),
            cache: AnalysisCache::new(10_000),
            stats: RouteStats::default(),
            any_rr: AtomicUsize::new(0),
            columns: Mutex::new(HashMap::new()),
            control: tokio::sync::Mutex::new(None),
            control_target: target(&db.shards[0].primary),
        })
    }

    /// Read/write splitting applies (enabled and some shard has replicas).
    pub fn split(&self) -> bool {
        self.routing.read_write_split && self.shards.iter().any(|s| !s.weights.is_empty())
    }

    pub fn sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// Statements need parsing at all (otherwise pgvane forwards without looking).
    pub fn needs_analysis(&self) -> bool {
        self.split() || self.sharded()
    }

    pub fn ryw(&self) -> ReadAfterWrite {
        self.routing.read_after_write
    }

    /// A control-plane connection to the first shard's primary.
    async fn control(&self) -> Option<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>> {
        let mut guard = self.control.lock().await;
        if guard.as_ref().is_some_and(|c| !c.is_closed()) {
            return Some(guard);
        }
        let t = &self.control_target;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&t.host)
            .port(t.port)
            .user(&t.user)
            .dbname(&t.dbname)
            .application_name("pgvane_monitor")
            .connect_timeout(Duration::from_secs(5));
        if let Some(p) = &t.password {
            cfg.password(p);
        }
        match tokio::time::timeout(Duration::from_secs(5), cfg.connect(tokio_postgres::NoTls)).await
        {
            Ok(Ok((client, conn))) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                *guard = Some(client);
                Some(guard)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "control connection failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Of these function names, the ones that make a statement a write (volatile, outside
    /// pg_catalog). Looked up once per name; unknown when the primary is unreachable
    /// (treated as writes, which is safe).
    pub async fn volatile_functions(&self, names: &[String]) -> Vec<String> {
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| self.catalog.cached(n).is_none())
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let Some(guard) = self.control().await else {
                return names.to_vec();
            };
            let Some(client) = guard.as_ref() else {
                return names.to_vec();
            };
            let _ = self.catalog.volatile_functions(&unknown, client).await;
        }
        names
            .iter()
            .filter(|n| self.catalog.cached(n).unwrap_or(true))
            .cloned()
            .collect()
    }

    /// Column order of a table (for INSERT without a column list), cached.
    pub async fn columns_of(&self, table: &str) -> Option<Vec<String>> {
        if let Some(c) = self.columns.lock().ok()?.get(table) {
            return Some(c.clone());
        }
        let guard = self.control().await?;
        let client = guard.as_ref()?;
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table],
            )
            .await
            .ok()?;
        let cols: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        if cols.is_empty() {
            return None;
        }
        self.columns
            .lock()
            .ok()?
            .insert(table.to_string(), cols.clone());
        Some(cols)
    }
}
