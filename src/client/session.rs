//! The session state machine of one logged-in client.
//!
//! Owns: the loop that reads client frames and server frames, when a server connection is
//! checked out (at the first statement that needs one) and released (transaction mode: at
//! ReadyForQuery idle with nothing outstanding; statement mode: after each statement; session
//! mode: at disconnect, after `server_reset_query`), bringing a server's settings in line with
//! the client's, timeouts, and ending the session cleanly.
//!
//! Must not: interpret messages beyond what [`super::forward`] does, or choose backends itself;
//! the pool to use comes from [`Session::target_pool`], the single place routing plugs in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::route::{DeferredBegin, Role, Target};
use super::tracker::{Owed, Pending, TxStatus};
use crate::app::{
    App, CancelSlot, CancelTarget, ClientInfo, DbPools, CLIENT_ACTIVE, CLIENT_IDLE, CLIENT_WAITING,
};
use crate::config::PoolMode;
use crate::database::DbRuntime;
use crate::params::{self, Params};
use crate::pool::{Pool, PooledConn};
use crate::protocol;
use crate::router::RouteSetting;

/// Bytes reserved before reading from a client or a server (one read per syscall as a rule).
const READ_CHUNK: usize = 8192;
const SERVER_READ_CHUNK: usize = 32 * 1024;

/// Everything login learned about the client.
pub struct SessionCtx {
    pub user: String,
    pub database: String,
    pub mode: PoolMode,
    pub pools: DbPools,
    pub startup: Params,
    pub cancel_key: (i32, i32),
    pub cancel_slot: CancelSlot,
    pub config: Arc<crate::config::Config>,
    pub db: Arc<DbRuntime>,
    pub info: Arc<ClientInfo>,
    /// `pin_session_state` for this user and database.
    pub pin: bool,
    /// `cache_unnamed_statements` for this user and database.
    pub cache_unnamed: bool,
    /// Session mode: the login reply (BackendKeyData with the backend's own process id,
    /// ReadyForQuery) is still to be sent, after checking out the session's server.
    pub backend_pid: bool,
}

/// How a session ends.
pub enum End {
    /// The client closed the socket or sent Terminate.
    ClientGone,
    /// Send this FATAL error, then close.
    Fatal(&'static str, String),
    /// Close after flushing what is queued for the client (a server's FATAL, forwarded).
    Closed,
}

impl From<protocol::ProtocolError> for End {
    fn from(e: protocol::ProtocolError) -> Self {
        End::Fatal("08P01", e.0)
    }
}

/// A read sent to a replica outside a transaction, kept until its first answer so that it can
/// be run again on the primary if the replica fails before anything reached the client.
pub struct Retry {
    /// The client's messages: one Query, or an extended-protocol batch up to its Sync.
    pub frames: Vec<bytes::Bytes>,
    /// The batch's Sync has been seen (a simple Query is complete at once).
    pub complete: bool,
    pub extended: bool,
}

pub struct Session {
    pub(super) app: Arc<App>,
    pub(super) ctx: SessionCtx,
    pub(super) client: TcpStream,
    /// Bytes read from the client, not yet framed.
    pub(super) cin: BytesMut,
    /// Bytes to write to the client.
    pub(super) cout: BytesMut,
    /// Bytes to write to the server.
    pub(super) sout: BytesMut,
    pub(super) server: Option<PooledConn>,
    /// Responses the held server still owes, and the transaction status the client was last
    /// told: the one place that decides whether a server may be reused.
    pub(super) pending: Pending,
    /// Prepared statements rewritten to shared names (transaction/statement mode).
    pub(super) rewrite: bool,
    pub(super) stmts: HashMap<Vec<u8>, super::prepared::ClientStmt>,
    /// A shape probe is in flight for this shared statement: client input waits for it.
    pub(super) awaiting_shape: Option<u64>,
    /// Settings from `SET` statements (over the startup ones).
    pub(super) session_params: Params,
    /// startup + session settings: what every server must have for this client.
    pub(super) effective: Params,
    /// After pgvane itself failed an extended-protocol message: ignore input until Sync.
    pub(super) skip_until_sync: bool,
    /// The SET statement text of the unnamed prepared statement and of the last Bind.
    pub(super) unnamed_set: Option<params::SetCmd>,
    pub(super) bound_set: Option<params::SetCmd>,
    pub(super) max_message: usize,
    /// True while pgvane replays a client's messages after re-preparing a stale statement.
    pub(super) replaying: bool,
    /// Statements are analyzed and routed (read/write split or sharding is on).
    pub(super) routing: bool,
    /// Where the held server came from.
    pub(super) held: Option<Target>,
    /// `SET pgvane.route`.
    pub(super) route: RouteSetting,
    /// `SET pgvane.min_lsn`: reads must see at least this WAL position.
    pub(super) min_lsn: u64,
    /// The primary's WAL position after this client's last write commit.
    pub(super) last_write_lsn: u64,
    /// When this client last committed a write (read_after_write = "time").
    pub(super) last_write_at: Option<Instant>,
    pub(super) session_shard: Option<u32>,
    pub(super) session_sharding_key: Option<String>,
    /// A BEGIN answered by pgvane, to be sent with the transaction's first statement.
    pub(super) deferred_begin: Option<DeferredBegin>,
    /// The current transaction wrote on a primary (for read-your-writes).
    pub(super) tx_wrote: bool,
    /// Routing facts of the client's prepared statements, by client name, and of the unnamed one.
    pub(super) routes: HashMap<Vec<u8>, Arc<super::route::RouteInfo>>,
    pub(super) unnamed_route: Option<Arc<super::route::RouteInfo>>,
    /// Per-checkout statistics, added to the pool's at release.
    pub(super) checkout_at: Option<Instant>,
    pub(super) queries: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// The batch being routed only prepares or describes a statement.
    pub(super) describe_only: bool,
    /// A read sent to a replica outside a transaction, kept until its first answer so that
    /// it can be retried once elsewhere if the replica fails before answering.
    pub(super) retry: Option<Retry>,
    /// Server messages forwarded to the client so far (to tell "nothing answered yet").
    pub(super) forwarded: u64,
    pub(super) retry_mark: u64,
    /// Route the next statement to the primary (the retry of a failed replica read).
    pub(super) force_primary: bool,
    /// The RowDescription of the read being retried already reached the client.
    pub(super) row_description_sent: bool,
    pub(super) skip_row_description: bool,
    /// Sequence state (see `Session::sequence_state_here`): the server that holds it and
    /// its checkout count when the client released it with the state intact; this checkout
    /// continues that one; a statement that may call nextval ran in this checkout; the
    /// unnamed statement reads or may set it.
    pub(super) seq_home: Option<(u64, u64)>,
    pub(super) seq_continuous: bool,
    pub(super) seq_set_here: bool,
    pub(super) unnamed_reads_sequence: bool,
    pub(super) unnamed_sets_sequence: bool,
    /// An Execute was sent since the client's last Sync.
    pub(super) batch_executed: bool,
    /// The client's unnamed statement (text, parameter types) and whether the held server
    /// has it: PostgreSQL keeps it across transactions, a pooled server may not.
    pub(super) unnamed_stmt: Option<(Bytes, Bytes)>,
    pub(super) unnamed_here: bool,
    /// A replayed statement Describe: the client already got its ParameterDescription.
    pub(super) skip_param_description: bool,
    /// The last portal bound from a named shared statement: (portal, the client's name).
    pub(super) bound_portal: Option<(Vec<u8>, Vec<u8>)>,
    /// The batch just routed was run as an extended-protocol fan-out.
    pub(super) fanned_out: bool,
    /// Room reserved in `max_buffered_bytes` for the large message being read.
    pub(super) input_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Since checkout the client ran something that may have changed its session state:
    /// what to read back from the server before giving it back.
    pub(super) change: super::tracker::state::Change,
    /// Custom (`x.y`) settings the client named (`pg_settings` does not list them).
    pub(super) custom_settings: Vec<String>,
    /// What keeps this client on its server (transaction/statement mode), if anything.
    pub(super) pinned: Option<usize>,
    /// The client's unnamed statement runs as a shared named one (see
    /// `forward::UNNAMED_KEY`).
    pub(super) cache_unnamed: bool,
}

/// How bringing a server to the client's settings went.
enum Applied {
    Done,
    /// The server refused (its state is unchanged): do not use it for this client.
    Refused(protocol::ErrorFields),
    /// The connection failed.
    Broken,
}

/// `PGVANE_STALL_LOG_SECS` (diagnostics, off by default): when set, a session holding a
/// server logs its state after that many seconds without traffic on either socket.
fn stall_after() -> Option<Instant> {
    static SECS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let secs = *SECS.get_or_init(|| {
        std::env::var("PGVANE_STALL_LOG_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    (secs > 0).then(|| Instant::now() + std::time::Duration::from_secs(secs))
}

/// Await `f`; with `PGVANE_STALL_LOG_SECS` set, log `label` each time it takes that long.
pub(super) async fn watched<F: std::future::Future>(label: &'static str, f: F) -> F::Output {
    let Some(mut at) = stall_after() else {
        return f.await;
    };
    let start = Instant::now();
    tokio::pin!(f);
    loop {
        tokio::select! {
            r = &mut f => return r,
            _ = tokio::time::sleep_until(at.into()) => {
                tracing::warn!(label, waited_s = start.elapsed().as_secs(), "session stalled awaiting");
                at = stall_after().unwrap_or(at);
            }
        }
    }
}

pub async fn run(app: Arc<App>, client: TcpStream, ctx: SessionCtx) {
    let rewrite = ctx.mode != PoolMode::Session;
    let routing = ctx.mode != PoolMode::Session && ctx.db.needs_analysis();
    let cache_unnamed = rewrite && !routing && ctx.cache_unnamed;
    let effective = ctx.startup.clone();
    let max_message = ctx.config.general.max_message_size;
    let mut s = Session {
        app,
        ctx,
        client,
        cin: BytesMut::new(),
        cout: BytesMut::new(),
        sout: BytesMut::new(),
        server: None,
        pending: Pending::new(),
        rewrite,
        stmts: HashMap::new(),
        awaiting_shape: None,
        session_params: Params::default(),
        effective,
        skip_until_sync: false,
        unnamed_set: None,
        bound_set: None,
        max_message,
        replaying: false,
        routing,
        held: None,
        route: RouteSetting::Auto,
        min_lsn: 0,
        last_write_lsn: 0,
        last_write_at: None,
        session_shard: None,
        session_sharding_key: None,
        deferred_begin: None,
        tx_wrote: false,
        routes: HashMap::new(),
        unnamed_route: None,
        checkout_at: None,
        queries: 0,
        bytes_in: 0,
        bytes_out: 0,
        describe_only: false,
        retry: None,
        forwarded: 0,
        retry_mark: 0,
        force_primary: false,
        row_description_sent: false,
        skip_row_description: false,
        skip_param_description: false,
        batch_executed: false,
        unnamed_stmt: None,
        unnamed_here: false,
        seq_home: None,
        seq_continuous: false,
        seq_set_here: false,
        unnamed_reads_sequence: false,
        unnamed_sets_sequence: false,
        bound_portal: None,
        fanned_out: false,
        input_permit: None,
        change: super::tracker::state::Change::None,
        custom_settings: Vec::new(),
        pinned: None,
        cache_unnamed,
    };
    let end = match s.finish_login().await {
        Ok(()) => s.main_loop().await,
        Err(end) => end,
    };
    s.finish(end).await;
}

impl Session {
    /// Session mode: check out the session's server now and tell the client its process id
    /// in BackendKeyData (with pgvane's own secret), so `pg_backend_pid()`, Notify pids and
    /// `pg_terminate_backend` match what the client was told. A checkout that fails ends
    /// the login with FATAL, as a refused connection does.
    async fn finish_login(&mut self) -> Result<(), End> {
        if !self.ctx.backend_pid {
            return Ok(());
        }
        let mark = self.cout.len();
        // Only a server free now: a login never waits for another client's session (with
        // the pool busy the client gets pgvane's own process id and its server later).
        if !self.checkout(None, false).await? {
            let queued = self.cout.split_off(mark);
            let e = protocol::parse_error(&queued);
            if e.code != "53300" {
                protocol::error_response(&mut self.cout, "FATAL", &e.code, &e.message);
                return Err(End::Closed);
            }
        }
        let pid = self.server.as_ref().map_or(0, |c| c.pid);
        if pid != 0 {
            self.ctx.cancel_key = self.app.rekey_cancel(self.ctx.cancel_key, pid);
        }
        let (p, secret) = self.ctx.cancel_key;
        protocol::backend_key_data(&mut self.cout, p, secret);
        protocol::ready_for_query(&mut self.cout, b'I');
        self.flush_client().await?;
        Ok(())
    }

    async fn main_loop(&mut self) -> End {
        match self.main_loop_inner().await {
            Ok(()) => End::ClientGone,
            Err(e) => e,
        }
    }

    async fn main_loop_inner(&mut self) -> Result<(), End> {
        let mut shutdown = self.app.shutdown_rx.clone();
        let idle_tx = self.ctx.config.general.idle_transaction_timeout;
        let client_idle = self.ctx.config.general.client_idle_timeout;
        loop {
            if self.routing {
                // The next statement may belong elsewhere: give the server back first.
                self.flush_client().await?;
                self.maybe_release().await;
            }
            while !self.must_wait_for_server() {
                protocol::check_frontend_header(&self.cin, self.max_message)?;
                let Some(frame) = protocol::split_frame(&mut self.cin, self.max_message)? else {
                    break;
                };
                self.on_client_frame(frame).await?;
            }
            self.flush_server().await?;
            self.flush_client().await?;
            self.maybe_release().await;
            if self.cin.is_empty() && self.cin.capacity() > 64 * 1024 && self.server.is_none() {
                self.cin = BytesMut::new();
            }
            self.hold_input_budget().await?;
            if self.server.is_none() && *shutdown.borrow() {
                return Err(End::Fatal("57P01", "pgvane is shutting down".into()));
            }
            let Some(server) = self.server.as_mut() else {
                // Idle: hold no buffers while waiting (an idle client costs little memory);
                // allocate only once the socket is readable.
                if self.cin.is_empty() {
                    self.cin = BytesMut::new();
                }
                self.cout = BytesMut::new();
                self.sout = BytesMut::new();
                let deadline = (!client_idle.is_zero()).then(|| Instant::now() + client_idle);
                tokio::select! {
                    r = self.client.readable() => {
                        r.map_err(|_| End::ClientGone)?;
                        self.cin.reserve(READ_CHUNK);
                        match self.client.try_read_buf(&mut self.cin) {
                            Ok(0) => return Err(End::ClientGone),
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => return Err(End::ClientGone),
                        }
                    }
                    _ = sleep_until(deadline) => {
                        return Err(End::Fatal("08P01", "client_idle_timeout: closing idle client connection".into()));
                    }
                    _ = shutdown.changed() => {}
                    _ = self.ctx.info.kill.notified() => {
                        return Err(End::Fatal("57P01", "terminating connection due to administrator command".into()));
                    }
                }
                continue;
            };
            let server: &mut crate::server::ServerConn = server;
            if self.cin.capacity() - self.cin.len() < 1024 {
                self.cin.reserve(READ_CHUNK);
            }
            // on_server_data consumed every complete frame: what is left is one partial frame.
            protocol::read_room(&mut server.rbuf, 4096, SERVER_READ_CHUNK);
            let waiting_in_tx = self.pending.tx() != TxStatus::Idle && self.pending.is_empty();
            let deadline = (waiting_in_tx && !idle_tx.is_zero()).then(|| Instant::now() + idle_tx);
            tokio::select! {
                r = self.client.read_buf(&mut self.cin) => {
                    if r.map_err(|_| End::ClientGone)? == 0 { return Err(End::ClientGone) }
                }
                r = server.stream.read_buf(&mut server.rbuf) => {
                    match r {
                        Ok(n) if n > 0 => self.on_server_data()?,
                        _ => self.server_lost(true)?,
                    }
                }
                _ = sleep_until(deadline) => {
                    return Err(End::Fatal("25P03", "idle_transaction_timeout: terminating connection due to idle-in-transaction timeout".into()));
                }
                _ = self.ctx.info.kill.notified() => {
                    return Err(End::Fatal("57P01", "terminating connection due to administrator command".into()));
                }
                _ = sleep_until(stall_after()) => self.log_stall(),
            }
        }
    }

    /// Diagnostics (`PGVANE_STALL_LOG_SECS`): nothing moved on either socket for that long
    /// while a server is held; say what pgvane is waiting for.
    fn log_stall(&self) {
        tracing::warn!(
            pending = %self.pending.summary(),
            trace = %self.server.as_ref().map(|s| s.trace.text()).unwrap_or_default(),
            cin = self.cin.len(),
            cin_first = ?self.cin.first().map(|b| *b as char),
            must_wait = self.must_wait_for_server(),
            skip_until_sync = self.skip_until_sync,
            replaying = self.replaying,
            retry = self.retry.is_some(),
            deferred_begin = self.deferred_begin.is_some(),
            "session stalled: a server is held and nothing arrived"
        );
    }

    /// Queue an ERROR of pgvane's own for the client (and count it).
    pub(super) fn client_error(&mut self, code: &str, message: &str) {
        crate::metrics::count_error(&self.ctx.database, code);
        protocol::error_response(&mut self.cout, "ERROR", code, message);
    }

    /// A replica failed before answering a read sent outside a transaction: count the failure
    /// against it and run the read again on the primary, without the client noticing.
    pub(super) fn retry_read(&mut self) -> bool {
        let Some(retry) = self.retry.take() else {
            return false;
        };
        let on_replica = matches!(&self.held, Some(t) if t.role == Role::Replica);
        // Nothing of the answer reached the client; all that is owed belongs to this read.
        let untouched = self.forwarded == self.retry_mark
            && retry.complete
            && (retry.extended
                || (self.pending.len() == 1
                    && matches!(self.pending.front(), Some(Owed::Query { .. }))));
        if !on_replica || !untouched {
            return false;
        }
        if let Some(t) = self.held.take() {
            if let Some(b) = t.replica.and_then(|i| {
                self.ctx
                    .db
                    .shards
                    .get(t.shard as usize)?
                    .state
                    .replicas
                    .get(i)
                    .cloned()
            }) {
                b.record_failure(&self.ctx.db.repl);
            }
        }
        self.ctx.db.stats.count_reason("replica_failed_retry");
        if let Some(conn) = self.server.take() {
            drop(conn);
        }
        self.clear_cancel();
        self.pending = Pending::new();
        self.force_primary = true;
        self.skip_row_description = std::mem::take(&mut self.row_description_sent);
        let len: usize = retry.frames.iter().map(|f| f.len()).sum();
        let mut cin = BytesMut::with_capacity(len + self.cin.len());
        for f in &retry.frames {
            cin.extend_from_slice(f);
        }
        cin.extend_from_slice(&self.cin);
        self.cin = cin;
        true
    }

    /// With routing on, a new statement outside a transaction may belong on another server:
    /// while the held server still owes answers to earlier (pipelined) statements, the next
    /// one waits in the buffer until the server is free and can be released.
    fn must_wait_for_server(&self) -> bool {
        self.routing
            && self.server.is_some()
            && self.pending.copy() == super::tracker::Copy::None
            && self.pending.tx() == TxStatus::Idle
            && !self.pending.open_batch()
            && !self.pending.is_empty()
            && matches!(
                self.cin.first(),
                Some(b'Q' | b'P' | b'B' | b'D' | b'E' | b'F')
            )
    }

    /// Handle every complete frame the server has sent.
    pub(super) fn on_server_data(&mut self) -> Result<(), End> {
        loop {
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let frame = match protocol::split_frame(
                &mut server.rbuf,
                crate::server::MAX_SERVER_MESSAGE,
            ) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    static BAD_SERVER: crate::logging::RateLimit =
                        crate::logging::RateLimit::per_second(5);
                    if let Some(suppressed) = BAD_SERVER.check() {
                        let e = e.0;
                        tracing::warn!(error = %crate::logging::bounded(&e, 200), suppressed, "server protocol error");
                    }
                    return self.server_lost(true);
                }
            };
            self.on_server_frame(frame)?;
        }
    }

    pub(super) async fn flush_server(&mut self) -> Result<(), End> {
        if self.sout.is_empty() {
            return Ok(());
        }
        self.bytes_in += self.sout.len() as u64;
        if let Some(server) = self.server.as_mut() {
            server.trace.sent(&self.sout);
            if watched("write to server", server.stream.write_all(&self.sout))
                .await
                .is_err()
            {
                self.sout.clear();
                return self.server_lost(true);
            }
        }
        self.sout.clear();
        if self.sout.capacity() > 1024 * 1024 {
            self.sout = BytesMut::new();
        }
        Ok(())
    }

    /// A large message is arriving: reserve its room in `max_buffered_bytes` before reading
    /// it (waiting for other clients' large messages to pass), and give the room back once
    /// it has been forwarded.
    async fn hold_input_budget(&mut self) -> Result<(), End> {
        match super::budget::large_message_at(&self.cin) {
            Some(len) if self.input_permit.is_none() => {
                let wait = self.ctx.config.general.query_wait_timeout;
                match watched("input budget", self.app.input.reserve(len, wait)).await {
                    Ok(p) => self.input_permit = Some(p),
                    Err(e) => {
                        crate::metrics::count_error(&self.ctx.database, "53200");
                        return Err(End::Fatal("53200", e.message()));
                    }
                }
            }
            Some(_) => {}
            None => {
                if self.input_permit.take().is_some() && self.cin.capacity() > 1024 * 1024 {
                    let mut small = BytesMut::with_capacity(self.cin.len().max(READ_CHUNK));
                    small.extend_from_slice(&self.cin);
                    self.cin = small;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), End> {
        if self.cout.is_empty() {
            return Ok(());
        }
        let r = watched("write to client", self.client.write_all(&self.cout)).await;
        self.bytes_out += self.cout.len() as u64;
        self.cout.clear();
        if self.cout.capacity() > 256 * 1024 {
            self.cout = BytesMut::new();
        }
        r.map_err(|_| End::ClientGone)
    }

    /// The pool for a target (shard 0's primary when none).
    fn pool_for(&self, t: Option<&Target>) -> Arc<Pool> {
        let Some(t) = t else {
            return self.ctx.pools.shards[0].primary.clone();
        };
        let shard = &self.ctx.pools.shards[t.shard as usize];
        match (t.role, t.replica) {
            (Role::Replica, Some(i)) => shard.replicas[i].clone(),
            _ => shard.primary.clone(),
        }
    }

    /// Make sure a server is held. On failure the error is queued for the client and false
    /// is returned; the caller finishes the client's request.
    pub(super) async fn ensure_server(&mut self) -> Result<bool, End> {
        self.ensure_server_for(None).await
    }

    pub(super) async fn ensure_server_for(&mut self, target: Option<Target>) -> Result<bool, End> {
        self.checkout(target, true).await
    }

    /// [`Session::ensure_server_for`]; with `wait` false only a server slot free now (the
    /// pool's error otherwise, 53300 when every slot is taken).
    async fn checkout(&mut self, target: Option<Target>, wait: bool) -> Result<bool, End> {
        if self.server.is_some() {
            return Ok(true);
        }
        let mut target = target;
        self.ctx
            .info
            .state
            .store(CLIENT_WAITING, std::sync::atomic::Ordering::Relaxed);
        let mut refused = 0;
        let conn = loop {
            let pool = self.pool_for(target.as_ref());
            // The server this client released last, if idle: its sequence state is there.
            let prefer = self.seq_home.map(|(id, _)| id);
            let got = if wait {
                watched("pool.get", Box::pin(pool.get_prefer(prefer))).await
            } else {
                pool.get_without_waiting().await
            };
            self.ctx
                .info
                .state
                .store(CLIENT_IDLE, std::sync::atomic::Ordering::Relaxed);
            let failure = match got {
                Ok(mut c) => {
                    match watched("apply_settings", Box::pin(self.apply_settings(&mut c))).await {
                        Applied::Done => break c,
                        Applied::Refused(e) => {
                            // Never run the client's statement on a server whose state
                            // differs from the client's: close it and try another, once.
                            drop(c);
                            refused += 1;
                            if refused < 2 {
                                continue;
                            }
                            self.client_error(
                                &e.code,
                                &format!(
                                    "could not restore this session's state on a server connection: {}",
                                    e.message
                                ),
                            );
                            return Ok(false);
                        }
                        Applied::Broken => {}
                    }
                    (
                        "08006",
                        "server connection failed while applying session settings".to_string(),
                        true,
                    )
                }
                Err(e) => {
                    let (code, msg) = e.sqlstate();
                    let counts = matches!(e, crate::pool::PoolError::Connect(_));
                    (code, msg, counts)
                }
            };
            // A replica that cannot serve: count it against the replica and send the read
            // to the primary instead (nothing has reached the client yet).
            if let Some(t) = target.as_mut().filter(|t| t.role == Role::Replica) {
                if let (Some(i), Some(sr)) = (t.replica, self.ctx.db.shards.get(t.shard as usize)) {
                    if let (Some(b), true) = (sr.state.replicas.get(i), failure.2) {
                        b.record_failure(&self.ctx.db.repl);
                    }
                }
                t.role = Role::Primary;
                t.replica = None;
                t.reason = format!("replica unavailable ({})", failure.1).into();
                continue;
            }
            tracing::debug!(msg = %failure.1, "checkout failed");
            self.client_error(failure.0, &failure.1);
            return Ok(false);
        };
        self.unnamed_here = false;
        self.seq_continuous = self.seq_home == Some((conn.id, conn.checkouts.wrapping_sub(1)));
        self.seq_set_here = false;
        if let Ok(mut slot) = self.ctx.cancel_slot.lock() {
            *slot = Some(CancelTarget {
                addr: conn.addr.clone(),
                pid: conn.pid,
                secret: conn.secret,
            });
        }
        if let Some(t) = &target {
            let db = &self.ctx.db;
            match (t.role, t.replica) {
                (Role::Replica, Some(i)) => {
                    db.stats
                        .replica
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(b) = db
                        .shards
                        .get(t.shard as usize)
                        .and_then(|s| s.state.replicas.get(i))
                    {
                        b.count_read();
                        b.record_success();
                    }
                }
                _ => {
                    db.stats
                        .primary
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        self.pending = Pending::new();
        self.server = Some(conn);
        self.deliver_notifications();
        self.held = target;
        self.ctx
            .info
            .state
            .store(CLIENT_ACTIVE, std::sync::atomic::Ordering::Relaxed);
        self.checkout_at = Some(Instant::now());
        if let Some(begin) = self.deferred_begin.take() {
            // The transaction's first statement chose this server: open the transaction here.
            protocol::query(&mut self.sout, &String::from_utf8_lossy(&begin.sql));
            self.pending.sent(Owed::Internal);
            self.pending.set_tx(TxStatus::InBlock);
        }
        Ok(true)
    }

    /// Bring a checked-out server's settings in line with the client's, as one implicit
    /// transaction (it applies wholly or not at all).
    async fn apply_settings(&self, conn: &mut PooledConn) -> Applied {
        let Some(sql) = params::sync_sql(&self.effective, &conn.params) else {
            return Applied::Done;
        };
        let history = stall_after().map(|_| conn.trace.text());
        let r = match (history, stall_after()) {
            (Some(h), Some(at)) => {
                let f = conn.run_internal(&sql);
                tokio::pin!(f);
                tokio::select! {
                    r = &mut f => r,
                    _ = tokio::time::sleep_until(at.into()) => {
                        tracing::warn!(trace = %h, "settings query unanswered; server history before it");
                        f.await
                    }
                }
            }
            _ => conn.run_internal(&sql).await,
        };
        match r {
            Ok(None) if !conn.broken => {
                conn.params = self.effective.clone();
                Applied::Done
            }
            Ok(Some(err)) if !conn.broken => {
                static SETTINGS: crate::logging::RateLimit =
                    crate::logging::RateLimit::per_second(5);
                if let Some(suppressed) = SETTINGS.check() {
                    tracing::warn!(code = %err.code, msg = %crate::logging::bounded(&err.message, 200), suppressed, "applying client settings failed; server not used for this client");
                }
                Applied::Refused(err)
            }
            _ => Applied::Broken,
        }
    }

    /// NotificationResponses that arrived during pgvane's own queries on the held server:
    /// the client's (it listens), queued for it in arrival order.
    pub(super) fn deliver_notifications(&mut self) {
        if let Some(conn) = self.server.as_mut() {
            for n in conn.notifications.drain(..) {
                self.cout.extend_from_slice(&n);
            }
        }
    }

    /// Read the held server's session state after the client may have changed it: it is
    /// the client's state now. Decides whether the client is pinned to the server.
    async fn capture_state(&mut self, change: super::tracker::state::Change) {
        use super::tracker::state::{self, Change};
        let names = match change {
            Change::None => return,
            Change::Names(n) => Some(n),
            Change::Unknown => None,
        };
        let sql = match &names {
            Some(n) => state::names_sql(n),
            None => state::capture_sql(&self.custom_settings),
        };
        let Some(conn) = self.server.as_mut() else {
            return;
        };
        let login = conn.login_user().to_string();
        let rows = match watched("capture", conn.query_pairs(&sql)).await {
            Ok((rows, None)) if !conn.broken => rows,
            _ => {
                // State unknown: the server must not serve anyone else.
                conn.broken = true;
                self.drop_server();
                return;
            }
        };
        if names.is_some() {
            // Only what those statements could change: update it in both states.
            state::apply_names(&mut conn.params, &rows, &login);
            state::apply_names(&mut self.session_params, &rows, &login);
            self.effective = self.ctx.startup.overlay(&self.session_params);
            return;
        }
        let c = state::parse_capture(&rows, &login);
        conn.params = c.params.clone();
        self.session_params = c.params;
        self.effective = self.ctx.startup.overlay(&self.session_params);
        let pin = c.pins.first().copied();
        if self.ctx.pin {
            // A loaded library stays loaded: that pin ends only with the server.
            if self.pinned != Some(state::PIN_LIBRARY) {
                self.pinned = pin;
            }
        } else if c.pins.contains(&1) {
            // PgBouncer's behaviour asked for: the lock must not pass to others.
            if !matches!(
                conn.run_internal("SELECT pg_catalog.pg_advisory_unlock_all()")
                    .await,
                Ok(None)
            ) {
                conn.broken = true;
            }
        }
        self.set_pinned(self.pinned);
    }

    /// What keeps the client on its server (an index in `PIN_REASONS`), also as SHOW
    /// CLIENTS and `/metrics` see it.
    fn set_pinned(&mut self, pin: Option<usize>) {
        self.pinned = pin;
        self.ctx.info.pinned.store(
            pin.map_or(0, |i| i as u8 + 1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// `server_close_on_library_load` in transaction mode: did the client's transaction load
    /// a library (PL/pgSQL on first use, LOAD, an extension)? Its state and reserved setting
    /// prefix cannot move or be undone, so the client stays on this server (with
    /// `pin_session_state`; otherwise the server is closed when given back), and the server
    /// is closed when the client leaves. One query per transaction, after the client has
    /// its answer.
    async fn check_library_load(&mut self) {
        let Some(conn) = self.server.as_mut() else {
            return;
        };
        let at_open = conn.libraries_at_open;
        match watched("library_settings", conn.library_settings()).await {
            Ok(now) if now.is_some() && now == at_open && !conn.broken => {}
            Ok(Some(_)) if !conn.broken => {
                if self.ctx.pin {
                    self.set_pinned(Some(super::tracker::state::PIN_LIBRARY));
                } else {
                    // Closed instead of reused when it is given back.
                    conn.broken = true;
                }
            }
            _ => {
                conn.broken = true;
                self.drop_server();
            }
        }
    }

    /// Give the server back when the pool mode allows it.
    async fn maybe_release(&mut self) {
        if self.ctx.mode == PoolMode::Session || !self.pending.reusable() {
            return;
        }
        if self.server.is_none() {
            return;
        }
        let change = std::mem::replace(&mut self.change, super::tracker::state::Change::None);
        if change != super::tracker::state::Change::None {
            self.flush_client().await.ok();
            Box::pin(self.capture_state(change)).await;
            self.deliver_notifications();
            self.flush_client().await.ok();
            if self.server.is_none() {
                return;
            }
        }
        if self.pinned.is_none()
            && self
                .server
                .as_ref()
                .is_some_and(|c| c.pool.settings().library_check)
        {
            self.flush_client().await.ok();
            Box::pin(self.check_library_load()).await;
            if self.server.is_none() {
                return;
            }
        }
        if self.pinned.is_some() {
            return;
        }
        if self.tx_wrote {
            watched(
                "capture_write_position",
                Box::pin(self.capture_write_position()),
            )
            .await;
            self.flush_client().await.ok();
        }
        self.held = None;
        self.retry = None;
        if let Some(mut conn) = self.server.take() {
            self.account(&mut conn);
            self.clear_cancel();
            if self.sequence_state_here() {
                // The client's sequence state is on this server, as long as nobody else
                // checks it out before the client does again.
                self.seq_home = Some((conn.id, conn.checkouts));
                conn.seq_owner = self.ctx.info.id;
            }
            let pool = conn.pool.clone();
            pool.put(conn);
        }
    }

    /// Add this checkout's counters to the pool's statistics.
    fn account(&mut self, conn: &mut PooledConn) {
        let (hits, misses) = conn.prepared.take_counts();
        crate::metrics::count_prepared_n(hits, misses);
        use std::sync::atomic::Ordering::Relaxed;
        let st = &conn.pool.stats;
        st.xact_count.fetch_add(1, Relaxed);
        st.query_count.fetch_add(self.queries.max(1), Relaxed);
        st.bytes_received.fetch_add(self.bytes_in, Relaxed);
        st.bytes_sent.fetch_add(self.bytes_out, Relaxed);
        if let Some(t) = self.checkout_at.take() {
            let us = t.elapsed().as_micros() as u64;
            st.xact_time_us.fetch_add(us, Relaxed);
            st.query_time_us.fetch_add(us, Relaxed);
            crate::metrics::observe_transaction(&self.ctx.database, us);
        }
        self.queries = 0;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.ctx
            .info
            .state
            .store(CLIENT_IDLE, std::sync::atomic::Ordering::Relaxed);
    }

    fn clear_cancel(&self) {
        if let Ok(mut slot) = self.ctx.cancel_slot.lock() {
            *slot = None;
        }
    }

    /// Drop the held server (closed, never reused) and forget what it owed.
    pub(super) fn drop_server(&mut self) {
        if let Some(conn) = self.server.take() {
            self.clear_cancel();
            drop(conn);
        }
        // What pinned the client was on that server and is gone with it.
        self.set_pinned(None);
        self.held = None;
        self.pending = Pending::new();
    }

    /// The server connection failed: drop it and answer every outstanding request of the
    /// client. `announce` sends an error first (not needed when the server's own FATAL was
    /// already forwarded). When the server held the client's session (session pooling or a
    /// transaction block) the client's connection ends too, as it would with PostgreSQL:
    /// running its next statement elsewhere would silently lose its session or transaction.
    pub(super) fn server_lost(&mut self, announce: bool) -> Result<(), End> {
        if self.retry_read() {
            return Ok(());
        }
        if self.server.is_none() {
            return Ok(());
        }
        let the_session = self.server_is_the_session();
        let (readies, outstanding) = self.pending.abandon();
        self.drop_server();
        if the_session {
            return Err(if announce {
                End::Fatal(
                    "08006",
                    "server closed the connection unexpectedly; the session's server is gone"
                        .into(),
                )
            } else {
                End::Closed
            });
        }
        if (readies > 0 || outstanding) && announce {
            self.client_error(
                "08006",
                "server connection lost; the current transaction was rolled back",
            );
        }
        for _ in 0..readies {
            protocol::ready_for_query(&mut self.cout, b'I');
        }
        if outstanding && readies == 0 {
            self.skip_until_sync = true;
        }
        Ok(())
    }

    async fn finish(mut self, end: End) {
        if let End::Fatal(code, msg) = &end {
            protocol::error_response(&mut self.cout, "FATAL", code, msg);
        }
        let _ = self.flush_client().await;
        if let Some(mut conn) = self.server.take() {
            self.clear_cancel();
            // A library the client loaded cannot be unloaded: the server is closed.
            let loaded = self.pinned == Some(super::tracker::state::PIN_LIBRARY);
            let clean = self.pending.reusable() && !conn.broken && !loaded;
            if clean {
                let mut reset = self.ctx.config.general.server_reset_query.clone();
                let changed = self.change != super::tracker::state::Change::None;
                if self.pinned.is_some() || changed {
                    // What pinned the client (temporary tables, advisory locks, cursors,
                    // prepared statements, LISTEN) goes with it.
                    reset = "DISCARD ALL".into();
                }
                let session_mode = self.ctx.mode == PoolMode::Session;
                if session_mode || self.pinned.is_some() || changed {
                    tokio::spawn(async move {
                        if let Ok(None) = conn.run_internal(&reset).await {
                            let pool = conn.pool.clone();
                            if session_mode {
                                pool.put_after_session(conn).await;
                            } else {
                                pool.put(conn);
                            }
                        }
                    });
                } else {
                    let pool = conn.pool.clone();
                    pool.put(conn);
                }
            }
            // Otherwise dropped: closing the server rolls back whatever the client left open.
        }
        self.app.unregister_cancel(self.ctx.cancel_key);
        self.app.unregister_client(self.ctx.info.id);
        tracing::debug!(user = %self.ctx.user, database = %self.ctx.database, "client session ended");
        let _ = self.client.shutdown().await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
