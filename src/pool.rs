//! Pools of server connections, one per (user, database, backend).
//!
//! Owns: handing out idle connections (LIFO, so hot connections are reused and cold ones age
//! out), opening new ones up to the pool size, the reserve pool, waiting with
//! `query_wait_timeout`, retiring connections past `server_lifetime`/`server_idle_timeout`,
//! checking long-idle ones before reuse, and keeping `min_pool_size` warm.
//!
//! Must not: speak to clients or look at SQL. A connection comes back only through [`Pool::put`]
//! when the session knows it is idle and clean; anything else is [`Pool::discard`]ed.
//!
//! Why not deadpool: we need a reserve pool that opens only after `reserve_pool_timeout`,
//! pre-warmed minimums, lifetime/idle reaping and a cheap liveness probe at checkout; deadpool
//! offers none of these directly, and its `Object` returns to the pool on drop, where a pooler
//! wants the opposite default (drop = close). A `Semaphore` plus a LIFO `Vec` is small and
//! gives full control.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::logging::{bounded, RateLimit};
use crate::protocol::ErrorFields;
use crate::server::{ConnectParams, ServerConn, ServerError};

/// Run-time settings of one pool (can change on reload).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    pub min_size: usize,
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    pub wait_timeout: Duration,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub check_delay: Duration,
    pub check_query: String,
    pub reset_query: String,
    /// `server_close_on_library_load`: count loaded libraries' settings at open and release.
    pub library_check: bool,
    pub max_prepared: usize,
    pub connect: ConnectParams,
}

/// Why no connection could be handed out.
#[derive(Debug)]
pub enum PoolError {
    /// Waited `query_wait_timeout` without a free connection.
    Timeout(Duration),
    /// Opening a new connection failed.
    Connect(ServerError),
    /// The pool is closed (database removed or shutting down).
    Closed,
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Timeout(d) => write!(
                f,
                "query_wait_timeout: no server connection available within {}",
                humantime::format_duration(*d)
            ),
            PoolError::Connect(e) => write!(f, "could not connect to server: {e}"),
            PoolError::Closed => f.write_str("pool is closed"),
        }
    }
}

impl PoolError {
    /// SQLSTATE and message for the client.
    pub fn sqlstate(&self) -> (&'static str, String) {
        match self {
            PoolError::Timeout(_) => ("53300", self.to_string()),
            PoolError::Connect(ServerError::Server(ErrorFields { code, message, .. })) => {
                let c: &'static str = match code.as_str() {
                    "3D000" => "3D000",
                    "28P01" | "28000" => "08004",
                    "53300" => "53300",
                    "57P03" => "57P03",
                    _ => "08006",
                };
                (c, format!("could not connect to server: {message}"))
            }
            PoolError::Connect(_) => ("08006", self.to_string()),
            PoolError::Closed => ("08006", self.to_string()),
        }
    }
}

/// Counters read by the admin console and metrics (updated at checkout/return only).
#[derive(Debug, Default)]
pub struct PoolStats {
    pub waiting: AtomicUsize,
    pub active: AtomicUsize,
    pub total_connects: AtomicU64,
    pub checkouts: AtomicU64,
    pub wait_time_us: AtomicU64,
    /// Longest current wait is not tracked; the largest single wait seen since the last reset.
    pub max_wait_us: AtomicU64,
    /// Transactions and queries served, bytes and time, added by sessions at release.
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub xact_time_us: AtomicU64,
    pub query_time_us: AtomicU64,
    pub errors: AtomicU64,
    /// Of `xact_count`/`query_count`: the shards after the first of multi-shard statements.
    /// Per-shard views (SHOW SHARDS, SHOW POOLS) count every shard a statement ran on; the
    /// per-database totals (SHOW STATS) count each client statement once.
    pub fanout_extra: AtomicU64,
}

/// Identity of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub user: String,
    pub database: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

pub struct Pool {
    pub key: PoolKey,
    settings: RwLock<Arc<PoolSettings>>,
    idle: Mutex<Vec<ServerConn>>,
    main: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    /// ParameterStatus values reported by this backend at login (for clients' startup).
    reported: Mutex<Option<Vec<(String, String)>>>,
    pub stats: PoolStats,
    /// Total connections open (idle + in use).
    open: AtomicUsize,
    /// Connections being opened right now (so maintenance does not open them twice).
    opening: AtomicUsize,
    /// PAUSE: checkouts wait until RESUME.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    /// RECONNECT bumps this; connections from an older generation are closed on return.
    generation: AtomicU64,
    /// Set when the pool's database or user is removed by a reload: no new connections.
    closed: std::sync::atomic::AtomicBool,
}

/// A connection checked out of a pool. Dropping it closes the connection; return it with
/// [`Pool::put`].
pub struct PooledConn {
    /// Always `Some` until the connection goes back to the pool in [`Pool::put`].
    conn: Option<ServerConn>,
    pub pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn.as_ref().expect("checked-out connection present")
    }
}
impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("checked-out connection present")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Not returned: the connection is closed.
            self.pool.open.fetch_sub(1, Ordering::Relaxed);
            self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(conn.close());
            }
        }
    }
}

impl Pool {
    pub fn new(key: PoolKey, settings: PoolSettings) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            key,
            main: Arc::new(Semaphore::new(settings.size)),
            reserve: Arc::new(Semaphore::new(settings.reserve_size)),
            settings: RwLock::new(Arc::new(settings)),
            idle: Mutex::new(Vec::new()),
            reported: Mutex::new(None),
            stats: PoolStats::default(),
            open: AtomicUsize::new(0),
            opening: AtomicUsize::new(0),
            paused: std::sync::atomic::AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            generation: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Connections open right now (idle + in use).
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// ParameterStatus values of this backend, connecting once if none is known yet.
    pub async fn reported_params(self: &Arc<Self>) -> Result<Vec<(String, String)>, PoolError> {
        if let Some(r) = self.reported.lock().ok().and_then(|g| g.clone()) {
            return Ok(r);
        }
        let c = self.get().await?;
        let r = c.reported.clone();
        self.put(c);
        Ok(r)
    }

    async fn acquire_permit(&self, s: &PoolSettings) -> Result<OwnedSemaphorePermit, PoolError> {
        if let Ok(p) = self.main.clone().try_acquire_owned() {
            return Ok(p);
        }
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = async {
            if s.reserve_size > 0 && s.reserve_timeout < s.wait_timeout {
                if let Ok(Ok(p)) =
                    tokio::time::timeout(s.reserve_timeout, self.main.clone().acquire_owned()).await
                {
                    return Ok(p);
                }
                let rest = s.wait_timeout.saturating_sub(s.reserve_timeout);
                let either = async {
                    tokio::select! {
                        p = self.main.clone().acquire_owned() => p,
                        p = self.reserve.clone().acquire_owned() => p,
                    }
                };
                match tokio::time::timeout(rest, either).await {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(_)) => Err(PoolError::Closed),
                    Err(_) => Err(PoolError::Timeout(s.wait_timeout)),
                }
            } else {
                match tokio::time::timeout(s.wait_timeout, self.main.clone().acquire_owned()).await
                {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(_)) => Err(PoolError::Closed),
                    Err(_) => Err(PoolError::Timeout(s.wait_timeout)),
                }
            }
        }
        .await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        let waited = started.elapsed().as_micros() as u64;
        self.stats.wait_time_us.fetch_add(waited, Ordering::Relaxed);
        self.stats.max_wait_us.fetch_max(waited, Ordering::Relaxed);
        crate::metrics::observe_wait(&self.key.database, waited);
        r
    }

    /// Check out a connection: an idle one if any is usable, else a new one.
    pub async fn get(self: &Arc<Self>) -> Result<PooledConn, PoolError> {
        self.get_prefer(None).await
    }

    /// [`Pool::get`], taking the idle connection `prefer` (a server id) if it is idle.
    pub async fn get_prefer(
        self: &Arc<Self>,
        prefer: Option<u64>,
    ) -> Result<PooledConn, PoolError> {
        self.get_inner(prefer, true).await
    }

    /// [`Pool::get`] only when a server slot is free now (an idle server, or room to open
    /// one); `Err(PoolError::Timeout(0))` instead of waiting for another client.
    pub async fn get_without_waiting(self: &Arc<Self>) -> Result<PooledConn, PoolError> {
        self.get_inner(None, false).await
    }

    async fn get_inner(
        self: &Arc<Self>,
        mut prefer: Option<u64>,
        wait: bool,
    ) -> Result<PooledConn, PoolError> {
        while self.paused.load(Ordering::Acquire) {
            let notified = self.resumed.notified();
            if !self.paused.load(Ordering::Acquire) {
                break;
            }
            notified.await;
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let s = self.settings();
        let permit = if wait {
            self.acquire_permit(&s).await?
        } else {
            self.main
                .clone()
                .try_acquire_owned()
                .map_err(|_| PoolError::Timeout(Duration::ZERO))?
        };
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        loop {
            let candidate = self.idle.lock().ok().and_then(|mut v| {
                // The preferred one; else the most recently used that holds no other
                // client's sequence state; else the most recently used.
                let want = prefer.take();
                let at = want
                    .and_then(|id| v.iter().rposition(|c| c.id == id))
                    .or_else(|| v.iter().rposition(|c| c.seq_owner == 0));
                match at {
                    Some(i) => Some(v.remove(i)),
                    None => v.pop(),
                }
            });
            let Some(mut conn) = candidate else { break };
            let now = Instant::now();
            let idle_for = now.duration_since(conn.last_used);
            if past_lifetime(&s, now, conn.created)
                || past_idle_timeout(&s, now, conn.last_used)
                || !conn.looks_alive()
            {
                self.open.fetch_sub(1, Ordering::Relaxed);
                tokio::spawn(conn.close());
                continue;
            }
            if idle_for >= s.check_delay {
                let q = if s.check_query.is_empty() {
                    ";"
                } else {
                    s.check_query.as_str()
                };
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(5), conn.run_internal(q)).await,
                    Ok(Ok(None))
                ) && !conn.broken;
                if !ok {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            }
            self.stats.active.fetch_add(1, Ordering::Relaxed);
            conn.checkouts += 1;
            conn.seq_owner = 0;
            return Ok(PooledConn {
                conn: Some(conn),
                pool: self.clone(),
                _permit: permit,
            });
        }
        let mut conn = self.open_new(&s).await.map_err(PoolError::Connect)?;
        conn.checkouts += 1;
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// Open a new server connection and count it as open (the caller holds a permit).
    async fn open_new(&self, s: &PoolSettings) -> Result<ServerConn, ServerError> {
        let generation = self.generation.load(Ordering::Relaxed);
        self.opening.fetch_add(1, Ordering::Relaxed);
        let r = ServerConn::connect(&s.connect).await;
        self.opening.fetch_sub(1, Ordering::Relaxed);
        let mut conn = r?;
        // Stamped with the generation it was opened in, so RECONNECT retires it only if it
        // happened meanwhile (an unstamped 0 would retire every connection after one RECONNECT).
        conn.generation = generation;
        if s.library_check {
            conn.libraries_at_open = conn.library_settings().await?;
        }
        self.stats.total_connects.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.reported.lock() {
            if r.is_none() {
                *r = Some(conn.reported.clone());
            }
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Close idle connections that the server closed, that are past `server_lifetime`, or
    /// past `server_idle_timeout` as long as that leaves `min_pool_size` open. Takes the idle
    /// lock once, never awaits (the liveness probe is a non-blocking read).
    fn reap_idle(&self, s: &PoolSettings, now: Instant) {
        let expired: Vec<ServerConn> = match self.idle.lock() {
            Ok(mut v) => {
                let mut open = self.open_count();
                let min = s.min_size.min(s.size);
                let mut keep = Vec::with_capacity(v.len());
                let mut gone = Vec::new();
                // Oldest-used first (the Vec is LIFO), so the warmest stay.
                for mut c in v.drain(..) {
                    let old = past_lifetime(s, now, c.created);
                    let idle = past_idle_timeout(s, now, c.last_used) && open > min;
                    // A server that closed an idle connection (restart, pg_terminate_backend)
                    // has sent something or EOF: gone, so the minimum is refilled.
                    if old || idle || !c.looks_alive() {
                        open = open.saturating_sub(1);
                        gone.push(c);
                    } else {
                        keep.push(c);
                    }
                }
                *v = keep;
                gone
            }
            Err(_) => Vec::new(),
        };
        self.open.fetch_sub(expired.len(), Ordering::Relaxed);
        for c in expired {
            tokio::spawn(c.close());
        }
    }

    /// Open connections until `min_pool_size` are open, one at a time, each bounded by
    /// `server_connect_timeout`. Stops at the first failure (retried next round) and when
    /// no permit is free (clients hold them all, so the pool is busy, not cold).
    async fn fill_to_min(&self, s: &PoolSettings) {
        if self.is_paused() || self.is_closed() {
            return;
        }
        for _ in 0..s.min_size.min(s.size) {
            let open = self.open_count() + self.opening.load(Ordering::Relaxed);
            if missing(open, s.min_size, s.size) == 0 {
                return;
            }
            let Ok(permit) = self.main.clone().try_acquire_owned() else {
                return;
            };
            match self.open_new(s).await {
                Ok(mut conn) => {
                    if self.is_closed()
                        || conn.generation != self.generation.load(Ordering::Relaxed)
                    {
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        tokio::spawn(conn.close());
                        return;
                    }
                    conn.last_used = Instant::now();
                    if let Ok(mut v) = self.idle.lock() {
                        // At the bottom: a warm-up connection is the coldest.
                        v.insert(0, conn);
                    }
                }
                Err(e) => {
                    static FAILED: RateLimit = RateLimit::per_second(1);
                    if let Some(suppressed) = FAILED.check() {
                        tracing::warn!(
                            database = %self.key.database,
                            user = %self.key.user,
                            server = %format!("{}:{}", self.key.host, self.key.port),
                            error = %bounded(&e.to_string(), 300),
                            suppressed,
                            "min_pool_size: could not open a server connection; retrying"
                        );
                    }
                    return;
                }
            }
            drop(permit);
        }
    }

    /// Return a connection whose session ended (session mode). With
    /// `server_close_on_library_load` it is first asked whether its client loaded a library
    /// (the connection stays checked out meanwhile) and closed if one did. Transaction mode
    /// checks after every transaction instead and pins the client (see
    /// `Session::check_library_load`): closing the server mid-session would lose what
    /// pgvane does not carry over (sequence state, a C library's own state).
    pub async fn put_after_session(&self, mut c: PooledConn) {
        if !c.broken && self.settings().library_check {
            let at_open = c.libraries_at_open;
            let now = c.library_settings().await.ok().flatten();
            if now.is_none() || now != at_open {
                tracing::debug!(
                    ?at_open,
                    ?now,
                    "a client loaded a library: closing the server connection"
                );
                return; // `c` drops here: closed.
            }
        }
        self.put(c);
    }

    /// Return a clean, idle connection.
    pub fn put(&self, mut c: PooledConn) {
        if c.broken
            || c.generation != self.generation.load(Ordering::Relaxed)
            || self.closed.load(Ordering::Relaxed)
        {
            return; // dropped: closed
        }
        let Some(mut conn) = c.conn.take() else {
            return;
        };
        conn.last_used = Instant::now();
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut v) = self.idle.lock() {
            v.push(conn);
        }
        // `c` drops here and releases its permit after the connection is idle again.
    }

    /// Close a connection that is in an unknown state.
    pub fn discard(&self, c: PooledConn) {
        drop(c);
    }

    /// PAUSE: new checkouts wait until [`Pool::resume`].
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// RECONNECT: close idle connections now and busy ones when they come back.
    pub fn reconnect(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.close_idle();
    }

    /// The pool's database/user was removed: no new checkouts, connections close on return.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.resume();
        self.close_idle();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Apply new settings (reload): the size changes take effect at once.
    pub fn update_settings(&self, new: PoolSettings) {
        let old = self.settings();
        if new.size > old.size {
            self.main.add_permits(new.size - old.size);
        } else if new.size < old.size {
            let shrink = old.size - new.size;
            let forgotten = self.main.forget_permits(shrink);
            if forgotten < shrink {
                // Busy permits: take them as they are released.
                let sem = self.main.clone();
                let rest = (shrink - forgotten) as u32;
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
        if new.reserve_size > old.reserve_size {
            self.reserve
                .add_permits(new.reserve_size - old.reserve_size);
        } else if new.reserve_size < old.reserve_size {
            self.reserve
                .forget_permits(old.reserve_size - new.reserve_size);
        }
        let backend_changed =
            new.connect.user != old.connect.user || new.connect.password != old.connect.password;
        if let Ok(mut s) = self.settings.write() {
            *s = Arc::new(new);
        }
        if backend_changed {
            self.reconnect();
        }
    }

    /// Close all idle connections (RECONNECT, reload of backend settings).
    pub fn close_idle(&self) {
        let drained: Vec<ServerConn> = self
            .idle
            .lock()
            .map(|mut v| v.drain(..).collect())
            .unwrap_or_default();
        self.open.fetch_sub(drained.len(), Ordering::Relaxed);
        for c in drained {
            tokio::spawn(c.close());
        }
    }

    /// The idle connections, for SHOW SERVERS (admin console; takes the idle lock briefly).
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        self.idle
            .lock()
            .map(|v| {
                v.iter()
                    .map(|c| IdleServer {
                        id: c.id,
                        pid: c.pid,
                        local_addr: c.stream.local_addr().ok(),
                        created: c.created,
                        last_used: c.last_used,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// How often maintenance looks at each pool.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// Per pool, until the pool is dropped or closed: retire expired idle connections and keep
/// `min_pool_size` open. Every step awaits or is bounded by the idle list's length, and the
/// task sleeps between rounds, so it can never hold a worker.
async fn maintain(pool: Weak<Pool>) {
    loop {
        {
            let Some(pool) = pool.upgrade() else { return };
            if pool.is_closed() {
                return;
            }
            let s = pool.settings();
            pool.reap_idle(&s, Instant::now());
            pool.fill_to_min(&s).await;
        }
        tokio::time::sleep(MAINTAIN_EVERY).await;
    }
}

/// Connections to open so that `min` (capped at the pool `size`) are open.
fn missing(open: usize, min: usize, size: usize) -> usize {
    min.min(size).saturating_sub(open)
}

fn past_lifetime(s: &PoolSettings, now: Instant, created: Instant) -> bool {
    !s.lifetime.is_zero() && now.saturating_duration_since(created) >= s.lifetime
}

fn past_idle_timeout(s: &PoolSettings, now: Instant, last_used: Instant) -> bool {
    !s.idle_timeout.is_zero() && now.saturating_duration_since(last_used) >= s.idle_timeout
}

/// An idle server connection as SHOW SERVERS lists it.
#[derive(Debug, Clone)]
pub struct IdleServer {
    pub id: u64,
    pub pid: i32,
    pub local_addr: Option<std::net::SocketAddr>,
    pub created: Instant,
    pub last_used: Instant,
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
