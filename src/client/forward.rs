//! Message-level forwarding between a client and its server.
//!
//! Owns: what happens to each client message (forwarded as is, rewritten to a shared
//! prepared-statement name, answered by pgvane itself) and the queue of responses the server
//! owes, so that answers pgvane synthesises (ParseComplete, CloseComplete) reach the client in
//! exactly the order PostgreSQL would have sent them, and answers to statements pgvane
//! injected (a Parse before a Bind on a server that lacks the statement) are swallowed.
//!
//! Must not: block on anything but the pool checkout in `ensure_server`; decoding is limited
//! to names, tags and status bytes (DataRow payloads are copied through untouched).

use bytes::Bytes;

use super::session::{End, Session};
use crate::config::PoolMode;
use crate::params::{self, SetCmd};
use crate::protocol;

/// A response the server owes for a message already sent, in order.
#[derive(Debug)]
pub enum Pending {
    /// A simple Query; `set` is a SET/RESET to record if it succeeds.
    Query {
        set: Option<SetCmd>,
        ok: bool,
    },
    /// Parse: `stmt` is the shared statement it prepares; `swallow` hides ParseComplete from
    /// the client (pgvane injected it).
    Parse {
        stmt: Option<std::sync::Arc<super::prepared::StmtDef>>,
        swallow: bool,
    },
    /// Bind; `stmt` is the shared statement (for a transparent re-prepare), `frame` the
    /// client's original message, `retried` once it was replayed.
    Bind {
        stmt: Option<std::sync::Arc<super::prepared::StmtDef>>,
        frame: Bytes,
        retried: bool,
    },
    Describe {
        frame: Bytes,
    },
    Execute {
        set: Option<SetCmd>,
        frame: Bytes,
    },
    /// A ReadyForQuery that answers a Sync the client already got an answer for.
    SwallowReady,
    /// `stmt`: a shared statement pgvane closes on this server (LRU eviction).
    Close {
        stmt: Option<std::sync::Arc<super::prepared::StmtDef>>,
        swallow: bool,
    },
    Sync,
    Function,
    /// Messages pgvane answers itself, released once everything before them has answered.
    Synthetic(Bytes),
    /// A statement pgvane sent itself (a deferred BEGIN): its answers are swallowed.
    Internal,
}

fn maybe_set(sql: &[u8]) -> Option<SetCmd> {
    let first = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if matches!(first, b's' | b'S' | b'r' | b'R' | b'/' | b'-') {
        params::parse_set(std::str::from_utf8(sql).ok()?)
    } else {
        None
    }
}

impl Session {
    pub(super) fn push_synthetic(&mut self, msg: Bytes) {
        if self.pending.is_empty() {
            self.cout.extend_from_slice(&msg);
        } else {
            self.pending.push_back(Pending::Synthetic(msg));
        }
    }

    fn drain_synthetic(&mut self) {
        while let Some(Pending::Synthetic(_)) = self.pending.front() {
            if let Some(Pending::Synthetic(msg)) = self.pending.pop_front() {
                self.cout.extend_from_slice(&msg);
            }
        }
    }

    /// Write a Parse for `def` to the server and remember it there (evicting the LRU one).
    fn prepare_on_server(&mut self, def: &std::sync::Arc<super::prepared::StmtDef>, swallow: bool) {
        let max = self.ctx.config.general.max_prepared_statements;
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if let Some(victim) = server.prepared.insert(def, max) {
            protocol::target_msg(&mut self.sout, b'C', b'S', &victim.name);
            self.pending.push_back(Pending::Close {
                stmt: Some(victim),
                swallow: true,
            });
        }
        protocol::parse_msg(&mut self.sout, &def.name, &def.query, &def.param_types);
        self.pending.push_back(Pending::Parse {
            stmt: Some(def.clone()),
            swallow,
        });
    }

    /// Make sure the named client statement exists on the server; returns its shared name.
    fn ensure_prepared(
        &mut self,
        client_name: &[u8],
    ) -> Option<std::sync::Arc<super::prepared::StmtDef>> {
        let def = self.stmts.get(client_name)?.clone();
        let present = self
            .server
            .as_mut()
            .is_some_and(|s| s.prepared.touch(def.id));
        if !present {
            self.prepare_on_server(&def, true);
        }
        Some(def)
    }

    /// Handle one client message.
    pub(super) async fn on_client_frame(&mut self, frame: Bytes) -> Result<(), End> {
        let tag = frame[0];
        tracing::trace!(tag = %(tag as char), len = frame.len(), "client message");
        if self.skip_until_sync {
            match tag {
                b'S' => {
                    self.skip_until_sync = false;
                    self.batch_open = false;
                    if self.server.is_some() {
                        self.sout.extend_from_slice(&frame);
                        self.pending.push_back(Pending::Sync);
                    } else {
                        protocol::ready_for_query(&mut self.cout, self.tx_status);
                    }
                }
                b'X' => return Err(End::ClientGone),
                _ => {}
            }
            return Ok(());
        }
        match tag {
            b'X' => Err(End::ClientGone),
            b'Q' => {
                let text = protocol::query_text(&frame)?;
                if let Some(cmd) = crate::router::pgvane_command(&String::from_utf8_lossy(text)) {
                    let saved = std::mem::take(&mut self.cout);
                    Box::pin(self.pgvane_command(cmd)).await;
                    protocol::ready_for_query(&mut self.cout, self.tx_status);
                    let reply = std::mem::replace(&mut self.cout, saved).freeze();
                    self.push_synthetic(reply);
                    return Ok(());
                }
                if self.routing && !Box::pin(self.route_query(&frame)).await? {
                    return Ok(());
                }
                if !self.ensure_server().await? {
                    protocol::ready_for_query(&mut self.cout, b'I');
                    return Ok(());
                }
                let set = maybe_set(protocol::query_text(&frame)?);
                self.sout.extend_from_slice(&frame);
                self.pending.push_back(Pending::Query { set, ok: false });
                Ok(())
            }
            b'S' => {
                self.batch_open = false;
                if self.server.is_none() {
                    self.drain_synthetic();
                    protocol::ready_for_query(&mut self.cout, self.tx_status);
                } else if self.copy_in {
                    // The server ignores Sync while it is in COPY IN mode.
                    self.sout.extend_from_slice(&frame);
                } else {
                    self.sout.extend_from_slice(&frame);
                    self.pending.push_back(Pending::Sync);
                }
                Ok(())
            }
            b'H' => {
                if self.server.is_some() {
                    self.sout.extend_from_slice(&frame);
                }
                Ok(())
            }
            b'd' | b'c' | b'f' => {
                if tag != b'd' {
                    self.copy_in = false;
                }
                if self.server.is_some() {
                    self.sout.extend_from_slice(&frame);
                }
                Ok(())
            }
            b'C' => {
                let (kind, name) = protocol::parse_target(&frame)?;
                if kind == b'S' && !name.is_empty() && self.rewrite {
                    // The shared statement stays prepared on servers; only the client's name goes.
                    self.stmts.remove(name);
                    self.routes.remove(name);
                    self.push_synthetic(Bytes::from_static(CLOSE_COMPLETE));
                    return Ok(());
                }
                if !self.need_server_extended().await? {
                    return Ok(());
                }
                self.sout.extend_from_slice(&frame);
                self.pending.push_back(Pending::Close {
                    stmt: None,
                    swallow: false,
                });
                Ok(())
            }
            b'P' if self.rewrite && self.server.is_none() && self.answer_known_parse(&frame)? => {
                Ok(())
            }
            b'P' | b'B' | b'D' | b'E' | b'F' => {
                if self.routing {
                    if !Box::pin(self.route_extended(&frame)).await? {
                        // A fan-out consumed the batch itself; otherwise skip to Sync.
                        if !std::mem::take(&mut self.fanned_out) {
                            self.skip_until_sync = true;
                        }
                        return Ok(());
                    }
                } else if !self.need_server_extended().await? {
                    return Ok(());
                }
                self.forward_extended(frame)
            }
            other => Err(End::Fatal(
                "08P01",
                format!("invalid frontend message type {}", other),
            )),
        }
    }

    /// A named Parse, outside a transaction, of a statement some server already accepted:
    /// answer ParseComplete without taking a server (it is prepared wherever it is used).
    /// Drivers that prepare synchronously (pgbench -M prepared, JDBC) then never wait for a
    /// server just to prepare, which also avoids a client-side deadlock when the pool is
    /// smaller than the client count.
    fn answer_known_parse(&mut self, frame: &Bytes) -> Result<bool, End> {
        let p = protocol::parse_parse(frame)?;
        if p.name.is_empty() || self.tx_status != b'I' {
            return Ok(false);
        }
        let reg = super::prepared::registry();
        let Some(def) = reg.get(&frame.slice_ref(p.query), &frame.slice_ref(p.param_types)) else {
            return Ok(false);
        };
        if !def.validated.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        if self.routing {
            let info = self.route_info(p.query, p.param_types);
            self.routes.insert(p.name.to_vec(), info);
        }
        self.stmts.insert(p.name.to_vec(), def);
        self.push_synthetic(Bytes::from_static(PARSE_COMPLETE));
        Ok(true)
    }

    /// Checkout for an extended-protocol message; on failure skip to the next Sync.
    async fn need_server_extended(&mut self) -> Result<bool, End> {
        if self.ensure_server().await? {
            Ok(true)
        } else {
            self.skip_until_sync = true;
            Ok(false)
        }
    }

    fn forward_extended(&mut self, frame: Bytes) -> Result<(), End> {
        self.batch_open = true;
        match frame[0] {
            b'P' => {
                let p = protocol::parse_parse(&frame)?;
                let set = maybe_set(p.query);
                if self.routing {
                    let info = self.route_info(p.query, p.param_types);
                    if p.name.is_empty() {
                        self.unnamed_route = Some(info);
                    } else {
                        self.routes.insert(p.name.to_vec(), info);
                    }
                }
                if p.name.is_empty() || !self.rewrite {
                    if p.name.is_empty() {
                        self.unnamed_set = set;
                    }
                    self.sout.extend_from_slice(&frame);
                    self.pending.push_back(Pending::Parse {
                        stmt: None,
                        swallow: false,
                    });
                    return Ok(());
                }
                let def = super::prepared::registry()
                    .intern(frame.slice_ref(p.query), frame.slice_ref(p.param_types));
                self.stmts.insert(p.name.to_vec(), def.clone());
                let present = self
                    .server
                    .as_mut()
                    .is_some_and(|s| s.prepared.touch(def.id));
                if present {
                    self.push_synthetic(Bytes::from_static(PARSE_COMPLETE));
                } else {
                    self.prepare_on_server(&def, false);
                }
            }
            b'B' => {
                let b = protocol::parse_bind(&frame)?;
                let mut stmt = None;
                if b.statement.is_empty() {
                    self.bound_set = self.unnamed_set.clone();
                    self.sout.extend_from_slice(&frame);
                } else if !self.rewrite {
                    self.sout.extend_from_slice(&frame);
                } else {
                    match self.ensure_prepared(b.statement) {
                        Some(def) => {
                            self.bound_set = maybe_set(&def.query);
                            protocol::bind_msg(&mut self.sout, b.portal, &def.name, b.rest);
                            stmt = Some(def);
                        }
                        None => self.sout.extend_from_slice(&frame),
                    }
                }
                let retried = self.replaying;
                self.pending.push_back(Pending::Bind {
                    stmt,
                    frame,
                    retried,
                });
            }
            b'D' => {
                let (kind, name) = protocol::parse_target(&frame)?;
                if kind == b'S' && !name.is_empty() && self.rewrite {
                    match self.ensure_prepared(name) {
                        Some(def) => protocol::target_msg(&mut self.sout, b'D', b'S', &def.name),
                        None => self.sout.extend_from_slice(&frame),
                    }
                } else {
                    self.sout.extend_from_slice(&frame);
                }
                self.pending.push_back(Pending::Describe { frame });
            }
            b'E' => {
                self.sout.extend_from_slice(&frame);
                let set = self.bound_set.take();
                self.pending.push_back(Pending::Execute { set, frame });
            }
            _ => {
                // 'F' FunctionCall: answered like a simple query, with ReadyForQuery.
                self.sout.extend_from_slice(&frame);
                self.pending.push_back(Pending::Function);
            }
        }
        Ok(())
    }

    /// Record a successful SET/RESET: the client keeps it, and this server now has it.
    fn apply_set(&mut self, cmd: SetCmd) {
        if let Some(server) = self.server.as_mut() {
            match &cmd {
                SetCmd::Set { name, sql } => {
                    server.params.set(name, params::Setting::Sql(sql.clone()))
                }
                SetCmd::Reset(name) => server.params.remove(name),
                SetCmd::ResetAll => server.params.clear(),
            }
        }
        match cmd {
            SetCmd::Set { name, sql } => self.session_params.set(&name, params::Setting::Sql(sql)),
            SetCmd::Reset(name) => self.session_params.remove(&name),
            SetCmd::ResetAll => self.session_params.clear(),
        }
        self.effective = self.ctx.startup.overlay(&self.session_params);
    }

    /// Handle one server message.
    pub(super) fn on_server_frame(&mut self, frame: Bytes) -> Result<(), End> {
        let tag = frame[0];
        tracing::trace!(tag = %(tag as char), len = frame.len(), pending = ?self.pending.front(), "server message");
        if matches!(tag, b'N' | b'A' | b'S') {
            self.cout.extend_from_slice(&frame);
            return Ok(());
        }
        self.drain_synthetic();
        if tag == b'E' {
            self.copy_in = false;
            return self.on_server_error(frame);
        }
        if tag == b'T' {
            if std::mem::take(&mut self.skip_row_description) {
                // The retried read's RowDescription: the client already has it.
                return Ok(());
            }
            if self.retry_frame.is_some() {
                self.row_description_sent = true;
            }
        } else {
            self.forwarded += 1;
        }
        if tag == b'G' {
            // COPY FROM STDIN: Syncs the client pipelined after Execute are ignored by the
            // server until CopyDone/CopyFail, so they get no ReadyForQuery.
            self.copy_in = true;
            let head = self.pending.pop_front();
            self.pending.retain(|p| !matches!(p, Pending::Sync));
            if let Some(h) = head {
                self.pending.push_front(h);
            }
        }
        let Some(head) = self.pending.front_mut() else {
            tracing::warn!(tag = %(tag as char), "server message with nothing pending: retiring the server");
            // Nothing was asked: a protocol desync. Forward and retire the connection.
            self.cout.extend_from_slice(&frame);
            if let Some(s) = self.server.as_mut() {
                s.broken = true;
            }
            return Ok(());
        };
        let mut forward = true;
        let mut done = false;
        match head {
            Pending::Query { set, ok } => match tag {
                b'C' => {
                    let t = protocol::command_tag(&frame);
                    if set.is_some() && (t == b"SET" || t == b"RESET") {
                        *ok = true;
                    }
                    self.note_tag(&frame);
                }
                b'Z' => done = true,
                _ => {}
            },
            Pending::Parse { swallow, stmt } => {
                forward = !*swallow;
                done = tag == b'1';
                if let (true, Some(def)) = (done, stmt.as_ref()) {
                    def.validated
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Pending::Bind { .. } => done = tag == b'2',
            Pending::Describe { .. } => done = matches!(tag, b'T' | b'n'),
            Pending::Execute { set, .. } => {
                done = matches!(tag, b'C' | b'I' | b's');
                if tag == b'C' {
                    let t = protocol::command_tag(&frame);
                    if t == b"SET" || t == b"RESET" {
                        if let Some(cmd) = set.take() {
                            self.note_tag(&frame);
                            self.cout.extend_from_slice(&frame);
                            self.pending.pop_front();
                            self.apply_set(cmd);
                            self.drain_synthetic();
                            return Ok(());
                        }
                    }
                    self.note_tag(&frame);
                }
            }
            Pending::Close { swallow, .. } => {
                forward = !*swallow;
                done = tag == b'3';
            }
            Pending::Sync | Pending::Function | Pending::SwallowReady => done = tag == b'Z',
            Pending::Internal => forward = false,
            Pending::Synthetic(_) => {}
        }
        if tag == b'Z' {
            return self.on_ready_for_query(frame);
        }
        if forward {
            self.cout.extend_from_slice(&frame);
        }
        if done {
            self.pending.pop_front();
            self.drain_synthetic();
        }
        Ok(())
    }

    fn note_tag(&mut self, frame: &[u8]) {
        if let Some(s) = self.server.as_mut() {
            s.note_command_complete(frame);
        }
        if protocol::command_tag(frame) == b"DISCARD ALL" {
            self.session_params.clear();
            self.effective = self.ctx.startup.clone();
        }
    }

    fn on_ready_for_query(&mut self, frame: Bytes) -> Result<(), End> {
        self.retry_frame = None;
        let status = frame.get(5).copied().unwrap_or(b'I');
        if let Some(Pending::Query { set, ok }) = self.pending.front_mut() {
            if *ok {
                if let Some(cmd) = set.take() {
                    self.pending.pop_front();
                    self.apply_set(cmd);
                    return self.finish_ready(frame, status);
                }
            }
        }
        match self.pending.front() {
            Some(Pending::SwallowReady | Pending::Internal) => {
                self.pending.pop_front();
                self.tx_status = status;
                return Ok(());
            }
            Some(Pending::Query { .. } | Pending::Sync | Pending::Function) => {
                self.pending.pop_front();
                self.queries += 1;
            }
            _ => {
                tracing::warn!(pending = ?self.pending, "ReadyForQuery without a pending Sync: retiring the server");
                if let Some(s) = self.server.as_mut() {
                    s.broken = true;
                }
            }
        }
        self.finish_ready(frame, status)
    }

    fn finish_ready(&mut self, frame: Bytes, status: u8) -> Result<(), End> {
        self.tx_status = status;
        if self.ctx.mode == PoolMode::Statement && status != b'I' {
            // Statement pooling cannot hold a server across statements: abort the transaction
            // by closing the server, and tell the client why.
            if let Some(s) = self.server.as_mut() {
                s.broken = true;
            }
            self.server = None;
            self.tx_status = b'I';
            self.client_error(
                "0A000",
                "transaction blocks are not allowed in statement pooling mode",
            );
            protocol::ready_for_query(&mut self.cout, b'I');
            self.pending.clear();
            return Ok(());
        }
        self.cout.extend_from_slice(&frame);
        self.drain_synthetic();
        Ok(())
    }

    fn on_server_error(&mut self, frame: Bytes) -> Result<(), End> {
        let fields = protocol::parse_error(&frame);
        let fatal = fields.severity == "FATAL" || fields.severity == "PANIC";
        if fatal && self.retry_read() {
            return Ok(());
        }
        self.forwarded += 1;
        crate::metrics::count_error(&self.ctx.database, &fields.code);
        if !fatal && self.try_reprepare(&fields) {
            return Ok(());
        }
        if fatal {
            // The server is going away; the client keeps its pgvane connection.
            protocol::downgrade_fatal(&frame, &mut self.cout);
            if let Some(s) = self.server.as_mut() {
                s.broken = true;
            }
        } else {
            self.cout.extend_from_slice(&frame);
        }
        match self.pending.front_mut() {
            Some(Pending::Query { ok, .. }) => *ok = false,
            Some(Pending::Sync | Pending::Function | Pending::SwallowReady | Pending::Internal)
            | None => {}
            Some(_) => {
                // Extended protocol: the server skips everything up to Sync.
                while let Some(p) = self.pending.front() {
                    if matches!(
                        p,
                        Pending::Sync
                            | Pending::Query { .. }
                            | Pending::Function
                            | Pending::SwallowReady
                    ) {
                        break;
                    }
                    let p = self.pending.pop_front();
                    if let Some(server) = self.server.as_mut() {
                        match p {
                            Some(Pending::Parse {
                                stmt: Some(def), ..
                            }) => server.prepared.remove(def.id),
                            Some(Pending::Close {
                                stmt: Some(def), ..
                            }) => {
                                server.prepared.insert(&def, 0);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        if fatal {
            self.server_lost(false);
        }
        Ok(())
    }
}

impl Session {
    /// A shared statement went stale on this server (a schema change altered its result
    /// type, or the server lost it): outside an explicit transaction, prepare it again and
    /// replay the client's messages from the failing Bind, once, so the client never sees it.
    fn try_reprepare(&mut self, fields: &protocol::ErrorFields) -> bool {
        let stale = (fields.code == "0A000"
            && fields
                .message
                .contains("cached plan must not change result type"))
            || (fields.code == "26000" && fields.message.contains("pgvane_"));
        if !stale || self.tx_status != b'I' {
            return false;
        }
        let Some(Pending::Bind {
            stmt: Some(def),
            retried: false,
            ..
        }) = self.pending.front()
        else {
            return false;
        };
        let def = def.clone();
        // Everything up to the Sync was skipped by the server; only Bind/Describe/Execute can
        // be replayed safely.
        let mut frames = Vec::new();
        let mut found_sync = false;
        for p in self.pending.iter() {
            match p {
                Pending::Bind { frame, .. }
                | Pending::Describe { frame }
                | Pending::Execute { frame, .. } => frames.push(frame.clone()),
                Pending::Sync => {
                    found_sync = true;
                    break;
                }
                _ => return false,
            }
        }
        if !found_sync {
            return false;
        }
        while let Some(p) = self.pending.pop_front() {
            if matches!(p, Pending::Sync) {
                break;
            }
        }
        tracing::debug!(statement = %String::from_utf8_lossy(&def.name), "re-preparing stale statement");
        self.pending.push_front(Pending::SwallowReady);
        if let Some(server) = self.server.as_mut() {
            server.prepared.remove(def.id);
        }
        protocol::target_msg(&mut self.sout, b'C', b'S', &def.name);
        self.pending.push_back(Pending::Close {
            stmt: None,
            swallow: true,
        });
        self.replaying = true;
        for f in frames {
            // Frames were valid the first time; a failure here cannot happen.
            let _ = self.forward_extended(f);
        }
        self.replaying = false;
        protocol::sync(&mut self.sout);
        self.pending.push_back(Pending::Sync);
        true
    }
}

const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];
const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];
