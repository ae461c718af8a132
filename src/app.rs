//! Process-wide state shared by all sessions: the running configuration, the registry of
//! pools, cancel keys handed to clients, client counting (logged-in clients, and the sockets
//! still logging in, oldest first) and the shutdown signal.
//!
//! Must not: do per-message work. Sessions look things up here once (at login, at checkout)
//! and keep what they need.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::auth::ScramVerifier;
use crate::config::{Config, Database, PasswordKind, User};
use crate::database::DbRuntime;
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

/// Client states for the admin console and metrics.
pub const CLIENT_IDLE: u8 = 0;
pub const CLIENT_ACTIVE: u8 = 1;
pub const CLIENT_WAITING: u8 = 2;

/// A connected, logged-in client, as operators see it.
pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: String,
    pub application_name: String,
    pub connected_at: SystemTime,
    /// CLIENT_IDLE, CLIENT_ACTIVE (holds a server) or CLIENT_WAITING (for a server).
    pub state: AtomicU8,
    /// The server it holds right now (shared with the cancel registry).
    pub server: CancelSlot,
    /// KILL / shutdown: the session ends as soon as it notices.
    pub killed: AtomicBool,
    pub kill: tokio::sync::Notify,
    /// 0, or 1 + the index in `tracker::state::PIN_REASONS` of what keeps it on its server.
    pub pinned: AtomicU8,
}

impl ClientInfo {
    /// Why the client is kept on its server connection (transaction/statement mode).
    pub fn pinned_reason(&self) -> Option<&'static str> {
        let i = self.pinned.load(Ordering::Relaxed) as usize;
        i.checked_sub(1)
            .and_then(|i| crate::client::tracker::state::PIN_REASONS.get(i).copied())
    }

    pub fn state_label(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            CLIENT_ACTIVE => "active",
            CLIENT_WAITING => "waiting",
            _ => "idle",
        }
    }

    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }
}

pub struct App {
    config: RwLock<Arc<Config>>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    cancels: Mutex<HashMap<(i32, i32), CancelSlot>>,
    verifiers: Mutex<HashMap<String, Arc<ScramVerifier>>>,
    dbs: Mutex<HashMap<String, Arc<DbRuntime>>>,
    registry: Mutex<HashMap<u64, Arc<ClientInfo>>>,
    next_client: AtomicU64,
    /// DISABLE db: new logins to these databases are refused.
    disabled: Mutex<HashSet<String>>,
    /// Logged-in clients (sessions and admin consoles), against `max_client_conn`.
    pub clients: AtomicUsize,
    /// Sockets that have not finished logging in, against `max_pending_logins`.
    pending: Mutex<PendingLogins>,
    pub shutdown_tx: watch::Sender<bool>,
    pub shutdown_rx: watch::Receiver<bool>,
    /// Admin console and operations state: config file path (RELOAD/SIGHUP), paused
    /// databases, SHOW STATS periods.
    pub admin: crate::admin::AdminState,
    /// `max_buffered_bytes`: room for large client messages, shared by all clients.
    pub input: crate::client::budget::InputBudget,
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let (tx, rx) = watch::channel(false);
        let input = crate::client::budget::InputBudget::new(config.general.max_buffered_bytes);
        Arc::new(App {
            config: RwLock::new(Arc::new(config)),
            pools: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            verifiers: Mutex::new(HashMap::new()),
            dbs: Mutex::new(HashMap::new()),
            registry: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
            disabled: Mutex::new(HashSet::new()),
            clients: AtomicUsize::new(0),
            pending: Mutex::new(PendingLogins::default()),
            shutdown_tx: tx,
            shutdown_rx: rx,
            input,
            admin: crate::admin::AdminState::default(),
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

    /// The runtime of a database (replication monitors, routing state), started on first use.
    pub fn db_runtime(&self, db: &Database, user: &User) -> Arc<DbRuntime> {
        let mut dbs = match self.dbs.lock() {
            Ok(d) => d,
            Err(e) => e.into_inner(),
        };
        if let Some(d) = dbs.get(&db.name) {
            return d.clone();
        }
        let d = DbRuntime::start(db, user);
        dbs.insert(db.name.clone(), d.clone());
        d
    }

    pub fn all_dbs(&self) -> Vec<Arc<DbRuntime>> {
        self.dbs
            .lock()
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default()
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
        if self.admin.is_paused(&db.name) {
            p.pause();
        }
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

    /// Move a client's cancel key to `pid` (its session-mode backend's own process id, which
    /// the client is then told), with a fresh secret; the slot stays the same.
    pub fn rekey_cancel(&self, old: (i32, i32), pid: i32) -> (i32, i32) {
        let mut map = match self.cancels.lock() {
            Ok(m) => m,
            Err(e) => e.into_inner(),
        };
        let Some(slot) = map.remove(&old) else {
            return old;
        };
        loop {
            let secret = rand::random::<i32>();
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry((pid, secret)) {
                e.insert(slot);
                return (pid, secret);
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

    /// Add a logged-in client to the registry.
    pub fn register_client(
        &self,
        user: &str,
        database: &str,
        addr: String,
        application_name: String,
        server: CancelSlot,
    ) -> Arc<ClientInfo> {
        let info = Arc::new(ClientInfo {
            id: self.next_client.fetch_add(1, Ordering::Relaxed),
            user: user.to_string(),
            database: database.to_string(),
            addr,
            application_name,
            connected_at: SystemTime::now(),
            state: AtomicU8::new(CLIENT_IDLE),
            server,
            killed: AtomicBool::new(false),
            kill: tokio::sync::Notify::new(),
            pinned: AtomicU8::new(0),
        });
        if let Ok(mut r) = self.registry.lock() {
            r.insert(info.id, info.clone());
        }
        info
    }

    pub fn unregister_client(&self, id: u64) {
        if let Ok(mut r) = self.registry.lock() {
            r.remove(&id);
        }
    }

    pub fn clients_snapshot(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self
            .registry
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn set_disabled(&self, db: &str, disabled: bool) {
        if let Ok(mut d) = self.disabled.lock() {
            if disabled {
                d.insert(db.to_string());
            } else {
                d.remove(db);
            }
        }
    }

    pub fn is_disabled(&self, db: &str) -> bool {
        self.disabled
            .lock()
            .map(|d| d.contains(db))
            .unwrap_or(false)
    }

    /// Apply a new, already validated configuration without dropping clients: pool sizes and
    /// timeouts change in place, removed databases/users drain (no new connections), changed
    /// databases get a fresh routing runtime for new sessions.
    pub fn reload(&self, new: Config) {
        let new = Arc::new(new);
        let old = self.config();
        if let Ok(mut c) = self.config.write() {
            *c = new.clone();
        }
        let pools: Vec<(PoolKey, Arc<Pool>)> = self
            .pools
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (key, pool) in pools {
            let still = new
                .user(&key.user)
                .zip(new.database(&key.database))
                .filter(|(_, db)| {
                    db.shards
                        .iter()
                        .flat_map(|s| std::iter::once(&s.primary).chain(s.replicas.iter()))
                        .any(|b| {
                            b.host == key.host
                                && b.port == key.port
                                && b.dbname_or(&db.name) == key.dbname
                        })
                });
            match still {
                Some((user, db)) => pool.update_settings(pool_settings(&new, user, db, &key)),
                None => {
                    pool.close();
                    if let Ok(mut p) = self.pools.lock() {
                        p.remove(&key);
                    }
                }
            }
        }
        if let Ok(mut dbs) = self.dbs.lock() {
            dbs.retain(|name, _| {
                let before = old.database(name).map(|d| format!("{d:?}"));
                let after = new.database(name).map(|d| format!("{d:?}"));
                before.is_some() && before == after
            });
        }
        if let Ok(mut v) = self.verifiers.lock() {
            v.clear();
        }
    }

    /// Logged-in clients.
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Sockets still logging in.
    pub fn pending_login_count(&self) -> usize {
        self.pending.lock().map(|p| p.order.len()).unwrap_or(0)
    }

    /// Register a socket that starts logging in. When `max` are pending already, the oldest
    /// is told to close (its ticket's `evicted` fires), so a flood of sockets that never log
    /// in delays nobody who does; the ticket returned is never the one evicted.
    pub fn begin_login(self: &Arc<Self>, max: usize) -> LoginTicket {
        let evicted = Arc::new(tokio::sync::Notify::new());
        let mut p = match self.pending.lock() {
            Ok(p) => p,
            Err(e) => e.into_inner(),
        };
        while p.order.len() >= max.max(1) {
            match p.order.pop_first() {
                Some((_, oldest)) => oldest.notify_one(),
                None => break,
            }
        }
        let id = p.next;
        p.next += 1;
        p.order.insert(id, evicted.clone());
        LoginTicket {
            app: self.clone(),
            id,
            evicted,
        }
    }
}

/// Pending logins, oldest first (ids grow with arrival).
#[derive(Default)]
struct PendingLogins {
    next: u64,
    order: std::collections::BTreeMap<u64, Arc<tokio::sync::Notify>>,
}

/// A socket's place among the pending logins; dropping it (login done or failed) frees it.
pub struct LoginTicket {
    app: Arc<App>,
    id: u64,
    /// Fires when newer sockets pushed this one out (it should close at once).
    pub evicted: Arc<tokio::sync::Notify>,
}

impl Drop for LoginTicket {
    fn drop(&mut self) {
        if let Ok(mut p) = self.app.pending.lock() {
            p.order.remove(&self.id);
        }
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
        library_check: g.server_close_on_library_load,
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn app() -> Arc<App> {
        let cfg = Config::from_toml(
            "[[users]]\nname = \"a\"\npassword = \"x\"\n[[databases]]\nname = \"d\"\n\
             [[databases.shards]]\nprimary = { host = \"127.0.0.1\" }\n",
        )
        .expect("config");
        App::new(cfg)
    }

    #[test]
    fn pending_logins_evict_the_oldest_and_free_on_drop() {
        let app = app();
        let a = app.begin_login(2);
        let b = app.begin_login(2);
        assert_eq!(app.pending_login_count(), 2);
        assert!(a.evicted.notified().now_or_never().is_none());
        let c = app.begin_login(2);
        assert_eq!(app.pending_login_count(), 2);
        assert!(
            a.evicted.notified().now_or_never().is_some(),
            "oldest evicted"
        );
        assert!(b.evicted.notified().now_or_never().is_none());
        assert!(c.evicted.notified().now_or_never().is_none());
        // The evicted one's ticket is already out of the list; dropping it frees nothing else.
        drop(a);
        assert_eq!(app.pending_login_count(), 2);
        drop(b);
        drop(c);
        assert_eq!(app.pending_login_count(), 0);
        // A limit of 0 is taken as 1: the newcomer always gets in.
        let d = app.begin_login(0);
        let e = app.begin_login(0);
        assert!(d.evicted.notified().now_or_never().is_some());
        assert!(e.evicted.notified().now_or_never().is_none());
    }
}
