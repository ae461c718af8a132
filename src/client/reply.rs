//! Server messages: applying the tracker's decision for each one.
//!
//! Owns: forwarding or swallowing each server message as [`super::tracker::Pending`] decides,
//! the side effects of completed answers (a SET that took effect, a statement a server
//! accepted), errors (transparent re-prepare of stale shared statements, prepared-statement
//! caches after skipped messages), a server that dies (FATAL or a closed socket), statement
//! pooling's no-transaction rule, and a server out of step (closed, client told 08P01).
//!
//! Must not: do I/O (the session loop flushes), or decide routing.

use bytes::Bytes;

use super::session::{End, Session};
use super::tracker::{Desync, Owed, Step, TxStatus};
use crate::config::PoolMode;
use crate::logging::{bounded, RateLimit};
use crate::params::{self, SetCmd};
use crate::protocol;

impl Session {
    /// Handle one server message.
    pub(super) fn on_server_frame(&mut self, frame: Bytes) -> Result<(), End> {
        let tag = frame[0];
        if let Some(s) = self.server.as_mut() {
            s.trace.received(tag);
        }
        self.drain_synthetic();
        if tag == b'E' {
            let fields = protocol::parse_error(&frame);
            if fields.severity == "FATAL" || fields.severity == "PANIC" {
                return self.on_server_fatal(frame, &fields);
            }
        }
        let step = match self.pending.on_server(&frame) {
            Ok(s) => s,
            Err(Desync(why)) => return Err(self.desync(&why)),
        };
        match step {
            Step::Forward => {
                if tag == b'C' {
                    self.note_tag(&frame);
                }
                self.forward(frame);
            }
            Step::Swallow => {}
            Step::ForwardDone(owed) => {
                self.completed(owed, &frame);
                self.forward(frame);
            }
            Step::SwallowDone(owed) => self.completed(owed, &frame),
            Step::Error { skipped } => self.on_server_error(frame, skipped),
            Step::Ready {
                owed,
                status,
                forward,
            } => self.on_ready(frame, owed, status, forward),
        }
        self.drain_synthetic();
        Ok(())
    }

    /// The server answered something it was not asked: it is closed, and so is the client,
    /// whose answers can no longer be matched to its requests.
    fn desync(&mut self, why: &str) -> End {
        static OUT_OF_STEP: RateLimit = RateLimit::per_second(5);
        if let Some(suppressed) = OUT_OF_STEP.check() {
            tracing::warn!(
                user = %bounded(&self.ctx.user, 64),
                database = %bounded(&self.ctx.database, 64),
                reason = %bounded(why, 200),
                trace = %self.server.as_ref().map(|s| s.trace.text()).unwrap_or_default(),
                suppressed,
                "server connection out of step: closing it and the client"
            );
        }
        if let Some(s) = self.server.as_mut() {
            s.broken = true;
        }
        End::Fatal(
            "08P01",
            "pgvane lost track of the server's responses; the connection is closed".into(),
        )
    }

    /// Pass a server message to the client, with the bookkeeping of a replica read's retry.
    fn forward(&mut self, frame: Bytes) {
        if frame[0] == b't' && std::mem::take(&mut self.skip_param_description) {
            return;
        }
        let simple_retry = self.retry.as_ref().is_some_and(|r| !r.extended);
        if frame[0] == b'T' && (simple_retry || self.skip_row_description) {
            if std::mem::take(&mut self.skip_row_description) {
                // The retried read's RowDescription: the client already has it.
                return;
            }
            self.row_description_sent = true;
        } else if !matches!(frame[0], b'N' | b'S' | b'A') {
            self.forwarded += 1;
        }
        self.cout.extend_from_slice(&frame);
    }

    /// Side effects of a completed answer.
    fn completed(&mut self, owed: Owed, frame: &[u8]) {
        match owed {
            Owed::Parse {
                stmt: Some(def), ..
            } => def
                .validated
                .store(true, std::sync::atomic::Ordering::Relaxed),
            Owed::Describe {
                frame: describe,
                stmt: Some(def),
                probe,
            } => {
                let shape = protocol::row_shape(frame);
                if let Some(server) = self.server.as_mut() {
                    server.prepared.set_shape(def.id, shape);
                }
                if probe {
                    if self.awaiting_shape == Some(def.id) {
                        self.awaiting_shape = None;
                    }
                    return;
                }
                // The client's name: the statement described, or the one the portal was
                // bound from.
                let name = match protocol::parse_target(&describe) {
                    Ok((b'S', name)) => Some(name.to_vec()),
                    Ok((_, portal)) => self
                        .bound_portal
                        .as_ref()
                        .filter(|(p, _)| p == portal)
                        .map(|(_, n)| n.clone()),
                    Err(_) => None,
                };
                if let Some(cs) = name
                    .and_then(|n| self.stmts.get_mut(&n))
                    .filter(|cs| cs.def.id == def.id)
                {
                    cs.told = Some(shape);
                    cs.used = true;
                }
            }
            Owed::Execute { set, .. } if frame[0] == b'C' => {
                self.note_tag(frame);
                let t = protocol::command_tag(frame);
                if let (Some(cmd), true) = (set, t == b"SET" || t == b"RESET") {
                    self.apply_set(cmd);
                }
            }
            _ => {}
        }
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

    fn note_tag(&mut self, frame: &[u8]) {
        if let Some(s) = self.server.as_mut() {
            s.note_command_complete(frame);
        }
        if protocol::command_tag(frame) == b"DISCARD ALL" {
            self.session_params.clear();
            self.effective = self.ctx.startup.clone();
        }
    }

    fn on_ready(&mut self, frame: Bytes, owed: Owed, status: TxStatus, forward: bool) {
        self.retry = None;
        if let Owed::Query {
            set: Some(cmd),
            ok: true,
        } = owed
        {
            self.apply_set(cmd);
        }
        if !forward {
            return;
        }
        self.queries += 1;
        if self.ctx.mode == PoolMode::Statement && status != TxStatus::Idle {
            // Statement pooling cannot hold a server across statements: abort the transaction
            // by closing the server, and tell the client why.
            if let Some(s) = self.server.as_mut() {
                s.broken = true;
            }
            self.server = None;
            self.pending.abandon();
            self.client_error(
                "0A000",
                "transaction blocks are not allowed in statement pooling mode",
            );
            protocol::ready_for_query(&mut self.cout, b'I');
            return;
        }
        self.cout.extend_from_slice(&frame);
    }

    fn on_server_error(&mut self, frame: Bytes, skipped: Vec<Owed>) {
        self.awaiting_shape = None;
        let mut frame = frame;
        if let Some(Owed::Bind {
            refuse: Some(r), ..
        }) = skipped.first()
        {
            // The Bind pgvane had the server refuse: the reason in its place.
            let mut e = bytes::BytesMut::new();
            protocol::error_response(&mut e, "ERROR", r.code, r.message);
            frame = e.freeze();
        }
        let fields = protocol::parse_error(&frame);
        self.forwarded += 1;
        crate::metrics::count_error(&self.ctx.database, &fields.code);
        if self.try_reprepare(&fields, &skipped) {
            return;
        }
        self.evict_changed_result_type(&fields, &skipped);
        self.cout.extend_from_slice(&frame);
        // What the server skipped did not happen there. Undone last first: a skipped
        // Close then Parse of one statement leaves the old copy in place.
        if let Some(server) = self.server.as_mut() {
            for o in skipped.into_iter().rev() {
                match o {
                    Owed::Parse {
                        stmt: Some(def), ..
                    } => server.prepared.remove(def.id),
                    Owed::Close {
                        stmt: Some(def), ..
                    } => {
                        server.prepared.insert(&def, 0);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The server is going away (FATAL): retry a replica read, or tell the client.
    fn on_server_fatal(&mut self, frame: Bytes, fields: &protocol::ErrorFields) -> Result<(), End> {
        if self.retry_read() {
            return Ok(());
        }
        self.forwarded += 1;
        crate::metrics::count_error(&self.ctx.database, &fields.code);
        if let Some(s) = self.server.as_mut() {
            s.broken = true;
        }
        if self.server_is_the_session() || fields.code == "08P01" {
            // Like PostgreSQL: the FATAL, then the connection closes. A protocol violation
            // (08P01) is the client's own doing: its stream cannot go on elsewhere either.
            self.cout.extend_from_slice(&frame);
            self.drop_server();
            return Err(End::Closed);
        }
        // An autocommit statement lost its server: the client keeps its pgvane connection.
        protocol::downgrade_fatal(&frame, &mut self.cout);
        self.server_lost(false)
    }

    /// The client's session state lives on this server: session pooling, a transaction
    /// block, or state that pins the client (a temporary table, an advisory lock, ...). Losing the server then ends the client's connection, as it would directly.
    pub(super) fn server_is_the_session(&self) -> bool {
        self.server.is_some()
            && (self.ctx.mode == PoolMode::Session
                || self.pending.tx() != TxStatus::Idle
                || self.pinned.is_some())
    }

    /// Close a stale shared statement on the held server (answer swallowed) and forget it
    /// there.
    pub(super) fn close_stale(&mut self, def: &std::sync::Arc<super::prepared::StmtDef>) {
        if let Some(server) = self.server.as_mut() {
            server.prepared.remove(def.id);
        }
        protocol::target_msg(&mut self.sout, b'C', b'S', &def.name);
        // With the statement: if the server skips this Close (an earlier message of the
        // batch fails), the copy is still there and the cache must say so.
        self.pending.sent(Owed::Close {
            stmt: Some(def.clone()),
            swallow: true,
        });
    }

    /// The first message the server skipped that the client sent (pgvane's own inline
    /// Parse, shape probe or LRU Close before it are not the client's): with the shared
    /// statement it names and the client's name for it.
    fn failed_client_message<'a>(
        &self,
        skipped: &'a [Owed],
    ) -> Option<(&'a Owed, std::sync::Arc<super::prepared::StmtDef>, Vec<u8>)> {
        let o = skipped.iter().find(|o| {
            !matches!(
                o,
                Owed::Parse { swallow: true, .. }
                    | Owed::Close { swallow: true, .. }
                    | Owed::Describe { probe: true, .. }
            )
        })?;
        match o {
            Owed::Bind {
                stmt: Some(def),
                frame,
                refuse: None,
                ..
            } => {
                let b = protocol::parse_bind(frame).ok()?;
                Some((o, def.clone(), b.statement.to_vec()))
            }
            Owed::Describe {
                stmt: Some(def),
                frame,
                probe: false,
            } => {
                let (_, name) = protocol::parse_target(frame).ok()?;
                Some((o, def.clone(), name.to_vec()))
            }
            _ => None,
        }
    }

    /// The client has used its statement `name` (described it or bound it) since its Parse.
    fn used_since_parse(&self, name: &[u8], def: &super::prepared::StmtDef) -> bool {
        self.stmts
            .get(name)
            .is_none_or(|cs| cs.used || cs.def.id != def.id)
    }

    /// A schema change altered a shared statement's result type, and the client has used
    /// its statement since its Parse, so PostgreSQL would fail it too: the client sees the
    /// 0A000 (drivers such as asyncpg re-prepare on it). The stale statement is closed on
    /// this server so that the client's re-prepare gets the new shape here.
    fn evict_changed_result_type(&mut self, fields: &protocol::ErrorFields, skipped: &[Owed]) {
        if !stale_plan(fields) || self.server.is_none() {
            return;
        }
        // The client's message, or pgvane's shape probe before a told client's Bind.
        let def = match (self.failed_client_message(skipped), skipped.first()) {
            (Some((_, def, _)), _) => def,
            (
                None,
                Some(Owed::Describe {
                    probe: true,
                    stmt: Some(def),
                    ..
                }),
            ) => def.clone(),
            _ => return,
        };
        if self.pending.skipping() {
            if !self.pending.is_empty() {
                return;
            }
            // The client has not sent its Sync (Parse/Describe/Flush): end the failed batch
            // with pgvane's own (answer swallowed), close the stale statement, and drop what
            // the client sends up to its Sync, as the server would have skipped it.
            protocol::sync(&mut self.sout);
            self.pending.sent(Owed::SwallowReady);
            self.close_stale(&def);
            protocol::flush_msg(&mut self.sout);
            self.pending.sent_flush();
            self.skip_until_sync = true;
            return;
        }
        // Queued behind the Sync the client already sent, answers swallowed. Its own Sync
        // makes the server send the CloseComplete (it flushes only at Sync or Flush) and
        // closes the batch, so the server can be released.
        self.close_stale(&def);
        protocol::sync(&mut self.sout);
        self.pending.sent(Owed::SwallowReady);
    }

    /// A shared statement this server cannot run for the client, where PostgreSQL would have
    /// run the client's statement: lost on this server (26000 for a `pgvane_` name, e.g.
    /// after a DEALLOCATE), or prepared here before a schema change that altered its result
    /// type while the client's own Parse came later (it has not used the statement since).
    /// Outside an explicit transaction, prepare it again and replay the client's messages
    /// from the failing one, once, so the client never sees it.
    fn try_reprepare(&mut self, fields: &protocol::ErrorFields, skipped: &[Owed]) -> bool {
        let lost = fields.code == "26000" && fields.message.contains("pgvane_");
        let changed = stale_plan(fields);
        // Only when the failed batch's Sync is the last thing owed (answers to anything
        // pipelined after it would otherwise overtake the replay), or when the client has
        // not sent that Sync yet (Parse/Describe/Flush, as asyncpg prepares) and nothing of
        // the batch was executed, so pgvane may end it with a Sync of its own.
        let sync_owed = self.pending.len() == 1 && matches!(self.pending.front(), Some(Owed::Sync));
        let flushed = self.pending.is_empty() && !self.batch_executed;
        if !(lost || changed) || self.pending.tx() != TxStatus::Idle || !(sync_owed || flushed) {
            return false;
        }
        let Some((first, def, name)) = self.failed_client_message(skipped) else {
            return false;
        };
        if matches!(first, Owed::Bind { retried: true, .. }) {
            return false;
        }
        let used = match first {
            Owed::Bind { first_use, .. } => !first_use,
            _ => self.used_since_parse(&name, &def),
        };
        if changed && used {
            return false;
        }
        let from = skipped
            .iter()
            .position(|o| std::ptr::eq(o, first))
            .unwrap_or(0);
        // PostgreSQL sends a statement's ParameterDescription before it revalidates the
        // result: the client has it already.
        self.skip_param_description = changed && matches!(first, Owed::Describe { .. });
        let mut frames = Vec::new();
        for o in &skipped[from..] {
            match o {
                Owed::Describe { probe: true, .. } => {}
                Owed::Bind { frame, .. }
                | Owed::Describe { frame, .. }
                | Owed::Execute { frame, .. } => frames.push(frame.clone()),
                _ => return false,
            }
        }
        tracing::debug!(statement = %String::from_utf8_lossy(&def.name), "re-preparing stale statement");
        if sync_owed {
            if !self.pending.swallow_head_ready() {
                return false;
            }
        } else {
            // End the failed batch here (answer swallowed); the client's Sync comes later.
            protocol::sync(&mut self.sout);
            self.pending.sent(Owed::SwallowReady);
        }
        self.close_stale(&def);
        self.replaying = true;
        for f in frames {
            // Frames were valid the first time; a failure here cannot happen.
            let _ = self.forward_extended(f);
        }
        self.replaying = false;
        if sync_owed {
            protocol::sync(&mut self.sout);
            self.pending.sent(Owed::Sync);
        } else {
            protocol::flush_msg(&mut self.sout);
            self.pending.sent_flush();
        }
        true
    }
}

/// A statement prepared before a schema change that PostgreSQL cannot run any more: its
/// result type changed (0A000), or a type it was planned with is gone (XX000 "cache lookup
/// failed for type", e.g. a domain dropped and created again).
fn stale_plan(fields: &protocol::ErrorFields) -> bool {
    (fields.code == "0A000" && fields.message.contains(RESULT_TYPE_CHANGED))
        || (fields.code == "XX000" && fields.message.starts_with("cache lookup failed for type"))
}

/// PostgreSQL's message when a prepared statement's result shape changed (0A000).
pub(super) const RESULT_TYPE_CHANGED: &str = "cached plan must not change result type";
