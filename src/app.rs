//! Process-wide state shared by all sessions: the running configuration, the registry of
//! pools, cancel keys handed to clients, client counting and the shutdown signal.
//!
//! Must not: do per-message work. Sessions look things up here once (at login, at checkout)
//! and keep what they need.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::auth::ScramVerifier;
use crate::config::{Config, Database, PasswordKind, User};
use crate::pool::{Pool, PoolKey, PoolSettings};
use crate::server::ConnectParams;

/// Pools of one shard of a database, for one user.
#[derive(Clone)]
pub struct ShardPools {
    pub primary: Arc<Pool>,
    pub replicas: Vec<Arc<Pool>>,
}

/// Every pool a (user, database) session may use.
#[derive(Clone)]
pub struct DbPools {
    pub shards: Vec<ShardPools>,
}

/// Where a client's cancel request must go right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: String,
    pub pid: i32,
    pub secret: i32,
}

/// One client's slot: updated at checkout and release.
pub type CancelSlot = Arc<Mutex<Option<CancelTarget>>>;

pub struct App {
    config: RwLock<Arc<Config>>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    cancels: Mutex<HashMap<(i32, i32), CancelSlot>>,
    verifiers: Mutex<HashMap<String, Arc<ScramVerifier>>>,
    pub clients: AtomicUsize,
    pub shutdown_tx: watch::Sender<bool>,
    pub shutdown_rx: watch::Receiver<bool>,
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let (tx, rx) = watch::channel(false);
        Arc::new(App {
            config: RwLock::new(Arc::new(config)),
            pools: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            verifiers: Mutex::new(HashMap::new()),
            clients: AtomicUsize::new(0),
            shutdown_tx: tx,
            shutdown_rx: rx,
        })
    }

    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_rx.borrow()
    }

    /// The SCRAM verifier for a user: parsed from config, or derived once from a plain password.
    pub fn scram_verifier(&self, user: &User) -> Option<Arc<ScramVerifier>> {
        let key = format!("{}\0{}", user.name, user.password.as_deref().unwrap_or(""));
        if let Some(v) = self.verifiers.lock().ok()?.get(&key) {
            return Some(v.clone());
        }
        let v = match user.password_kind()? {
            PasswordKind::ScramVerifier(s) => ScramVerifier::parse(&s).ok()?,
            PasswordKind::Plain(p) => ScramVerifier::from_password(&p),
            PasswordKind::Md5Hash(_) => return None,
        };
        let v = Arc::new(v);
        self.verifiers.lock().ok()?.insert(key, v.clone());
        Some(v)
    }

    /// Pools for a user's session on a database, created on first use.
    pub fn pools_for(&self, user: &User, db: &Database) -> DbPools {
        let cfg = self.config();
        let shards = db
            .shards
            .iter()
            .map(|sh| ShardPools {
                primary: self.pool(&cfg, user, db, &sh.primary),
                replicas: sh
                    .replicas
                    .iter()
                    .map(|r| self.pool(&cfg, user, db, r))
                    .collect(),
            })
            .collect();
        DbPools { shards }
    }

    fn pool(
        &self,
        cfg: &Config,
        user: &User,
        db: &Database,
        backend: &crate::config::Backend,
    ) -> Arc<Pool> {
        let key = PoolKey {
            user: user.name.clone(),
            database: db.name.clone(),
            host: backend.host.clone(),
            port: backend.port,
            dbname: backend.dbname_or(&db.name).to_string(),
        };
        let mut pools = match self.pools.lock() {
            Ok(p) => p,
            Err(e) => e.into_inner(),
        };
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let p = Pool::new(key.clone(), pool_settings(cfg, user, db, &key));
        pools.insert(key, p.clone());
        p
    }

    /// All pools, for the admin console and metrics.
    pub fn all_pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Register a client's cancel key; returns its slot.
    pub fn register_cancel(&self) -> ((i32, i32), CancelSlot) {
        let slot: CancelSlot = Arc::new(Mutex::new(None));
        let mut map = match self.cancels.lock() {
            Ok(m) => m,
            Err(e) => e.into_inner(),
        };
        loop {
            let pid = (rand::random::<u32>() >> 1) as i32;
            let secret = rand::random::<i32>();
            if pid != 0 && !map.contains_key(&(pid, secret)) {
                map.insert((pid, secret), slot.clone());
                return ((pid, secret), slot);
            }
        }
    }

    pub fn unregister_cancel(&self, key: (i32, i32)) {
        if let Ok(mut m) = self.cancels.lock() {
            m.remove(&key);
        }
    }

    /// Where a cancel request for (pid, secret) should go, if that client holds a server.
    pub fn cancel_target(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let slot = self.cancels.lock().ok()?.get(&(pid, secret))?.clone();
        let t = slot.lock().ok()?.clone();
        t
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Settings of the pool for (user, database, backend) under `cfg`.
pub fn pool_settings(cfg: &Config, user: &User, db: &Database, key: &PoolKey) -> PoolSettings {
    let g = &cfg.general;
    let password = user
        .server_password
        .clone()
        .or_else(|| user.password.clone());
    PoolSettings {
        size: cfg.pool_size_for(user, db),
        min_size: g.min_pool_size,
        reserve_size: g.reserve_pool_size,
        reserve_timeout: g.reserve_pool_timeout,
        wait_timeout: g.query_wait_timeout,
        idle_timeout: g.server_idle_timeout,
        lifetime: g.server_lifetime,
        check_delay: g.server_check_delay,
        check_query: g.server_check_query.clone(),
        reset_query: g.server_reset_query.clone(),
        max_prepared: g.max_prepared_statements,
        connect: ConnectParams {
            host: key.host.clone(),
            port: key.port,
            user: user.server_user().to_string(),
            password,
            dbname: key.dbname.clone(),
            connect_timeout: g.server_connect_timeout,
            startup: Vec::new(),
        },
    }
}
