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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::forward::Pending;
use super::prepared::StmtDef;
use crate::app::{App, CancelSlot, CancelTarget, DbPools};
use crate::config::{Database, General, PoolMode, User};
use crate::params::{self, Params};
use crate::pool::{Pool, PooledConn};
use crate::protocol;

/// Everything login learned about the client.
pub struct SessionCtx {
    pub user: User,
    pub database: Database,
    pub mode: PoolMode,
    pub pools: DbPools,
    pub startup: Params,
    pub cancel_key: (i32, i32),
    pub cancel_slot: CancelSlot,
    pub general: General,
}

/// How a session ends.
pub enum End {
    /// The client closed the socket or sent Terminate.
    ClientGone,
    /// Send this FATAL error, then close.
    Fatal(&'static str, String),
}

impl From<protocol::ProtocolError> for End {
    fn from(e: protocol::ProtocolError) -> Self {
        End::Fatal("08P01", e.0)
    }
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
    /// Responses the server still owes, in order, with what to do with each.
    pub(super) pending: VecDeque<Pending>,
    /// Transaction status from the last ReadyForQuery ('I', 'T' or 'E').
    pub(super) tx_status: u8,
    /// Prepared statements rewritten to shared names (transaction/statement mode).
    pub(super) rewrite: bool,
    pub(super) stmts: HashMap<Vec<u8>, Arc<StmtDef>>,
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
    /// The server is in COPY IN mode (between CopyInResponse and CopyDone/CopyFail).
    pub(super) copy_in: bool,
}

pub async fn run(app: Arc<App>, client: TcpStream, ctx: SessionCtx) {
    let rewrite = ctx.mode != PoolMode::Session;
    let effective = ctx.startup.clone();
    let max_message = ctx.general.max_message_size;
    let mut s = Session {
        app,
        ctx,
        client,
        cin: BytesMut::new(),
        cout: BytesMut::new(),
        sout: BytesMut::new(),
        server: None,
        pending: VecDeque::new(),
        tx_status: b'I',
        rewrite,
        stmts: HashMap::new(),
        session_params: Params::default(),
        effective,
        skip_until_sync: false,
        unnamed_set: None,
        bound_set: None,
        max_message,
        replaying: false,
        copy_in: false,
    };
    let end = s.main_loop().await;
    s.finish(end).await;
}

impl Session {
    async fn main_loop(&mut self) -> End {
        match self.main_loop_inner().await {
            Ok(()) => End::ClientGone,
            Err(e) => e,
        }
    }

    async fn main_loop_inner(&mut self) -> Result<(), End> {
        let mut shutdown = self.app.shutdown_rx.clone();
        let idle_tx = self.ctx.general.idle_transaction_timeout;
        let client_idle = self.ctx.general.client_idle_timeout;
        loop {
            while let Some(frame) = protocol::split_frame(&mut self.cin, self.max_message)? {
                self.on_client_frame(frame).await?;
            }
            self.flush_server().await?;
            self.flush_client().await?;
            self.maybe_release();
            if self.cin.is_empty() && self.cin.capacity() > 64 * 1024 && self.server.is_none() {
                self.cin = BytesMut::new();
            }
            if self.server.is_none() && *shutdown.borrow() {
                return Err(End::Fatal("57P01", "pgvane is shutting down".into()));
            }
            let Some(server) = self.server.as_mut() else {
                let deadline = (!client_idle.is_zero()).then(|| Instant::now() + client_idle);
                tokio::select! {
                    r = self.client.read_buf(&mut self.cin) => {
                        if r.map_err(|_| End::ClientGone)? == 0 { return Err(End::ClientGone) }
                    }
                    _ = sleep_until(deadline) => {
                        return Err(End::Fatal("08P01", "client_idle_timeout: closing idle client connection".into()));
                    }
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            let server: &mut crate::server::ServerConn = server;
            let waiting_in_tx = self.tx_status != b'I' && self.pending.is_empty();
            let deadline = (waiting_in_tx && !idle_tx.is_zero()).then(|| Instant::now() + idle_tx);
            tokio::select! {
                r = self.client.read_buf(&mut self.cin) => {
                    if r.map_err(|_| End::ClientGone)? == 0 { return Err(End::ClientGone) }
                }
                r = server.stream.read_buf(&mut server.rbuf) => {
                    match r {
                        Ok(n) if n > 0 => self.on_server_data()?,
                        _ => self.server_lost(true),
                    }
                }
                _ = sleep_until(deadline) => {
                    return Err(End::Fatal("25P03", "idle_transaction_timeout: terminating connection due to idle-in-transaction timeout".into()));
                }
            }
        }
    }

    /// Handle every complete frame the server has sent.
    fn on_server_data(&mut self) -> Result<(), End> {
        loop {
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let frame =
                match protocol::split_frame(&mut server.rbuf, crate::server::MAX_SERVER_MESSAGE) {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "server protocol error");
                        self.server_lost(true);
                        return Ok(());
                    }
                };
            self.on_server_frame(frame)?;
        }
    }

    pub(super) async fn flush_server(&mut self) -> Result<(), End> {
        if self.sout.is_empty() {
            return Ok(());
        }
        if let Some(server) = self.server.as_mut() {
            if server.stream.write_all(&self.sout).await.is_err() {
                self.sout.clear();
                self.server_lost(true);
                return Ok(());
            }
        }
        self.sout.clear();
        Ok(())
    }

    pub(super) async fn flush_client(&mut self) -> Result<(), End> {
        if self.cout.is_empty() {
            return Ok(());
        }
        let r = self.client.write_all(&self.cout).await;
        self.cout.clear();
        if self.cout.capacity() > 256 * 1024 {
            self.cout = BytesMut::new();
        }
        r.map_err(|_| End::ClientGone)
    }

    /// The pool the next statement's server comes from.
    fn target_pool(&self) -> Arc<Pool> {
        self.ctx.pools.shards[0].primary.clone()
    }

    /// Make sure a server is held. On failure the error is queued for the client and false
    /// is returned; the caller finishes the client's request.
    pub(super) async fn ensure_server(&mut self) -> Result<bool, End> {
        if self.server.is_some() {
            return Ok(true);
        }
        let pool = self.target_pool();
        let mut conn = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                let (code, msg) = e.sqlstate();
                tracing::debug!(%msg, "checkout failed");
                protocol::error_response(&mut self.cout, "ERROR", code, &msg);
                return Ok(false);
            }
        };
        if let Some(sql) = params::sync_sql(&self.effective, &conn.params) {
            match conn.run_internal(&sql).await {
                Ok(None) if !conn.broken => conn.params = self.effective.clone(),
                Ok(Some(err)) if !conn.broken => {
                    tracing::warn!(code = %err.code, msg = %err.message, "applying client settings failed");
                    conn.params = self.effective.clone();
                }
                _ => {
                    protocol::error_response(
                        &mut self.cout,
                        "ERROR",
                        "08006",
                        "server connection failed while applying session settings",
                    );
                    drop(conn);
                    return Ok(false);
                }
            }
        }
        if let Ok(mut slot) = self.ctx.cancel_slot.lock() {
            *slot = Some(CancelTarget {
                addr: conn.addr.clone(),
                pid: conn.pid,
                secret: conn.secret,
            });
        }
        self.tx_status = b'I';
        self.server = Some(conn);
        Ok(true)
    }

    /// Give the server back when the pool mode allows it.
    fn maybe_release(&mut self) {
        if self.ctx.mode == PoolMode::Session || !self.pending.is_empty() || self.tx_status != b'I'
        {
            return;
        }
        if let Some(conn) = self.server.take() {
            self.clear_cancel();
            let pool = conn.pool.clone();
            pool.put(conn);
        }
    }

    fn clear_cancel(&self) {
        if let Ok(mut slot) = self.ctx.cancel_slot.lock() {
            *slot = None;
        }
    }

    /// The server connection failed: drop it and answer every outstanding request of the
    /// client. `announce` sends an error first (not needed when the server's own FATAL was
    /// already forwarded).
    pub(super) fn server_lost(&mut self, announce: bool) {
        let Some(conn) = self.server.take() else {
            return;
        };
        self.clear_cancel();
        drop(conn);
        let had_work = !self.pending.is_empty() || self.tx_status != b'I';
        if had_work && announce {
            protocol::error_response(
                &mut self.cout,
                "ERROR",
                "08006",
                "server connection lost; the current transaction was rolled back",
            );
        }
        let mut syncs = 0;
        let mut outstanding = false;
        for p in self.pending.drain(..) {
            match p {
                Pending::Sync | Pending::Query { .. } | Pending::Function => syncs += 1,
                Pending::Synthetic(_) => {}
                _ => outstanding = true,
            }
        }
        for _ in 0..syncs {
            protocol::ready_for_query(&mut self.cout, b'I');
        }
        if outstanding && syncs == 0 {
            self.skip_until_sync = true;
        }
        self.tx_status = b'I';
    }

    async fn finish(mut self, end: End) {
        if let End::Fatal(code, msg) = &end {
            protocol::error_response(&mut self.cout, "FATAL", code, msg);
        }
        let _ = self.flush_client().await;
        if let Some(mut conn) = self.server.take() {
            self.clear_cancel();
            let clean = self.pending.is_empty() && self.tx_status == b'I' && !conn.broken;
            if clean {
                let reset = self.ctx.general.server_reset_query.clone();
                if self.ctx.mode == PoolMode::Session && !reset.is_empty() {
                    tokio::spawn(async move {
                        if let Ok(None) = conn.run_internal(&reset).await {
                            let pool = conn.pool.clone();
                            pool.put(conn);
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
        tracing::debug!(user = %self.ctx.user.name, database = %self.ctx.database.name, "client session ended");
        let _ = self.client.shutdown().await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
