//! Client messages: what happens to each (forwarded as is, rewritten to a shared
//! prepared-statement name, answered by pgvane itself), and what the server owes for it,
//! recorded in the session's [`super::tracker::Pending`] so that answers pgvane synthesises
//! (ParseComplete, CloseComplete) reach the client in exactly the order PostgreSQL would have
//! sent them, and answers to messages pgvane injected are swallowed.
//!
//! Must not: block on anything but the pool checkout in `ensure_server`; decoding is limited
//! to names, tags and status bytes. Server messages are handled in [`super::reply`].

use bytes::Bytes;

use super::session::{End, Session};
use super::statements::{refuse_sql, REFUSED, SEQUENCE_REFUSAL};
use super::tracker::{state, Copy, Owed};
use crate::params::{self, SetCmd};
use crate::protocol;

fn maybe_set(sql: &[u8]) -> Option<SetCmd> {
    let first = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if matches!(first, b's' | b'S' | b'r' | b'R' | b'/' | b'-') {
        params::parse_set(std::str::from_utf8(sql).ok()?)
    } else {
        None
    }
}

impl Session {
    /// An answer of pgvane's own, in its place among the server's answers.
    pub(super) fn push_synthetic(&mut self, msg: Bytes) {
        if let Some(msg) = self.pending.synthetic(msg) {
            // Part of an answer: a replica read can no longer be replayed unseen.
            self.forwarded += 1;
            self.cout.extend_from_slice(&msg);
        }
    }

    /// A statement that may change session state is on its way to the server: read the
    /// server's state before it serves anyone else (the common path skips this).
    pub(super) fn note_session_change(&mut self, sql: &[u8]) {
        use super::tracker::state::{self, Change};
        let Ok(sql) = std::str::from_utf8(sql) else {
            self.change = Change::Unknown;
            return;
        };
        let change = state::classify(sql);
        if change == Change::None
            || (self.pinned.is_none() && !state::changes_beyond_unpinning(sql))
        {
            return;
        }
        if change == Change::Unknown {
            for name in state::custom_names(sql) {
                if self.custom_settings.len() < 64 && !self.custom_settings.contains(&name) {
                    self.custom_settings.push(name);
                }
            }
        }
        self.change = std::mem::replace(&mut self.change, Change::None).and(change);
    }

    /// Before a statement that PostgreSQL refuses while other sessions use a database (DROP
    /// DATABASE, CREATE DATABASE from its template, ALTER DATABASE RENAME): close pgvane's
    /// idle server connections to it, which a direct client would not have had. Connections
    /// other clients hold are left: PostgreSQL reports them as it would directly.
    fn free_databases_named_in(&self, tag: u8, frame: &[u8]) {
        let sql = if tag == b'Q' {
            protocol::query_text(frame).ok()
        } else {
            protocol::parse_parse(frame).ok().map(|p| p.query)
        };
        let Some(sql) = sql else { return };
        // Cheap filter first: this runs on every statement.
        let first = sql.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(
            first,
            Some(b'd' | b'D' | b'a' | b'A' | b'c' | b'C' | b'/' | b'-')
        ) {
            return;
        }
        let Ok(sql) = std::str::from_utf8(sql) else {
            return;
        };
        let names = crate::router::databases_needing_no_sessions(sql);
        if names.is_empty() {
            return;
        }
        for pool in self.app.all_pools() {
            if names.iter().any(|n| *n == pool.key.dbname) {
                tracing::debug!(dbname = %pool.key.dbname, "closing idle server connections before a statement that needs the database free");
                pool.close_idle();
            }
        }
    }

    /// After an autocommit `RESET name`, `RESET ALL` or `DISCARD ALL`: the SQL that puts
    /// back the client's startup values of what it reset, if it had any.
    fn startup_after_reset(&self, text: &[u8], set: Option<&SetCmd>) -> Option<String> {
        if self.ctx.startup.is_empty() || self.pending.tx() != super::tracker::TxStatus::Idle {
            return None;
        }
        let mut wanted = params::Params::default();
        match set {
            Some(SetCmd::Reset(name)) => {
                wanted.set(name, self.ctx.startup.get(name)?.clone());
            }
            Some(SetCmd::ResetAll) => wanted = self.ctx.startup.clone(),
            _ => {
                let t = std::str::from_utf8(text).ok()?;
                let t = params::skip_ws_comments(t).trim_end().trim_end_matches(';');
                if !t.eq_ignore_ascii_case("discard all") {
                    return None;
                }
                wanted = self.ctx.startup.clone();
            }
        }
        params::sync_sql(&wanted, &params::Params::default())
    }

    /// Release synthetic answers that are now next in line.
    pub(super) fn drain_synthetic(&mut self) {
        while let Some(msg) = self.pending.take_synthetic() {
            self.forwarded += 1;
            self.cout.extend_from_slice(&msg);
        }
    }

    /// Write a Parse for `def` to the server and remember it there (evicting the LRU one).
    pub(super) fn prepare_on_server(
        &mut self,
        def: &std::sync::Arc<super::prepared::StmtDef>,
        swallow: bool,
    ) {
        let max = self.ctx.config.general.max_prepared_statements;
        if self.pending.skipping() {
            // The server discards everything until Sync: a Parse sent now would not prepare
            // anything, and recording it would leave this server's cache claiming a
            // statement it lacks (a later client's Bind would fail with 26000).
            return;
        }
        let Some(server) = self.server.as_mut() else {
            return;
        };
        if let Some(victim) = server.prepared.insert(def, max) {
            protocol::target_msg(&mut self.sout, b'C', b'S', &victim.name);
            self.pending.sent(Owed::Close {
                stmt: Some(victim),
                swallow: true,
            });
        }
        protocol::parse_msg(&mut self.sout, &def.name, &def.query, &def.param_types);
        self.pending.sent(Owed::Parse {
            stmt: Some(def.clone()),
            swallow,
        });
        self.probe_shape(def);
    }

    /// Make sure the named client statement exists on the server; returns its shared name.
    fn ensure_prepared(
        &mut self,
        client_name: &[u8],
    ) -> Option<std::sync::Arc<super::prepared::StmtDef>> {
        let def = self.stmts.get(client_name)?.def.clone();
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
        if let Some(r) = self.retry.as_mut().filter(|r| r.extended && !r.complete) {
            r.frames.push(frame.clone());
            r.complete = tag == b'S';
        }
        if self.skip_until_sync {
            match tag {
                b'S' => {
                    self.skip_until_sync = false;
                    if self.server.is_some() {
                        self.sout.extend_from_slice(&frame);
                        self.pending.sent(Owed::Sync);
                    } else {
                        protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
                    }
                }
                b'X' => return Err(End::ClientGone),
                _ => {}
            }
            return Ok(());
        }
        if self.server.is_some() && self.pending.copy() == Copy::In {
            match tag {
                b'd' | b'c' | b'f' | b'X' => {}
                // PostgreSQL ignores these during COPY IN; if the COPY has just failed it
                // would answer the Sync, so whether an answer comes depends on a race:
                // pgvane does not forward them, so the server's state stays known.
                b'S' | b'H' => return Ok(()),
                other => {
                    // PostgreSQL reports it, then ends the connection.
                    if let Some(s) = self.server.as_mut() {
                        s.broken = true;
                    }
                    self.client_error(
                        "08P01",
                        &format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                    );
                    return Err(End::Fatal("08P01", super::LOST_SYNC.into()));
                }
            }
        }
        let frame = if self.cache_unnamed {
            self.name_unnamed(frame)?
        } else {
            frame
        };
        if matches!(tag, b'Q' | b'P') {
            self.free_databases_named_in(tag, &frame);
        }
        match tag {
            b'X' => Err(End::ClientGone),
            b'Q' => {
                let text = protocol::query_text(&frame)?;
                if let Some(cmd) = crate::router::pgvane_command(&String::from_utf8_lossy(text)) {
                    let saved = std::mem::take(&mut self.cout);
                    Box::pin(self.pgvane_command(cmd)).await;
                    protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
                    let reply = std::mem::replace(&mut self.cout, saved).freeze();
                    self.push_synthetic(reply);
                    return Ok(());
                }
                if self.routing
                    && !super::session::watched("route_query", Box::pin(self.route_query(&frame)))
                        .await?
                {
                    return Ok(());
                }
                if !self.ensure_server().await? {
                    protocol::ready_for_query(&mut self.cout, b'I');
                    return Ok(());
                }
                let text = protocol::query_text(&frame)?;
                // A simple Query destroys the unnamed statement (PostgreSQL's rule).
                self.unnamed_stmt = None;
                let sql = String::from_utf8_lossy(text);
                if !self.sequence_state_here() && state::reads_sequence_state(&sql) {
                    // Raised by the server, so a transaction fails as PostgreSQL's would.
                    protocol::query(&mut self.sout, &refuse_sql(state::SEQUENCE_STATE));
                    self.pending.sent(Owed::Query {
                        set: None,
                        ok: false,
                    });
                    return Ok(());
                }
                if !self.sequence_state_here() && state::may_set_sequence_state(&sql) {
                    self.seq_set_here = true;
                }
                let set = maybe_set(text);
                self.note_session_change(text);
                let restore = self.startup_after_reset(text, set.as_ref());
                self.sout.extend_from_slice(&frame);
                self.pending.sent(Owed::Query { set, ok: false });
                if let Some(sql) = restore {
                    // PostgreSQL's RESET returns to the value the client logged in with; the
                    // server's own login value differs: put the client's back, unseen.
                    protocol::query(&mut self.sout, &sql);
                    self.pending.sent(Owed::Internal);
                }
                Ok(())
            }
            b'S' => {
                self.batch_executed = false;
                if self.server.is_none() {
                    self.drain_synthetic();
                    protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
                } else {
                    // (Ignored by the server in COPY IN mode; the tracker knows.)
                    self.sout.extend_from_slice(&frame);
                    self.pending.sent(Owed::Sync);
                }
                Ok(())
            }
            b'H' => {
                if self.server.is_some() {
                    self.sout.extend_from_slice(&frame);
                    self.pending.sent_flush();
                }
                Ok(())
            }
            b'd' | b'c' | b'f' => {
                // Outside COPY IN PostgreSQL ignores these; without a server nothing listens.
                if self.server.is_some() {
                    if tag != b'd' {
                        self.pending.sent_copy_end();
                    }
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
                if kind == b'S' && self.rewrite {
                    // The client's unnamed statement is gone (a later Bind gets 26000).
                    self.unnamed_stmt = None;
                }
                if !self.need_server_extended().await? {
                    return Ok(());
                }
                self.sout.extend_from_slice(&frame);
                self.pending.sent(Owed::Close {
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
                    if !super::session::watched(
                        "route_extended",
                        Box::pin(self.route_extended(&frame)),
                    )
                    .await?
                    {
                        // A fan-out consumed the batch itself; otherwise skip to Sync.
                        if !std::mem::take(&mut self.fanned_out) {
                            self.skip_until_sync = true;
                        }
                        return Ok(());
                    }
                } else if !self.need_server_extended().await? {
                    return Ok(());
                }
                if tag == b'B' && self.rewrite {
                    let retry_armed = self.retry.is_some();
                    if !self.learn_shape_before_bind(&frame).await? {
                        return Ok(());
                    }
                    if self.server.is_none() {
                        // Lost while learning. A replica read's retry put the client's
                        // messages (this one too) back in the input for the primary;
                        // otherwise the client was told: skip to its Sync.
                        if !(retry_armed && self.retry.is_none()) {
                            self.skip_until_sync = true;
                        }
                        return Ok(());
                    }
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
        if p.name.is_empty() || self.pending.tx() != super::tracker::TxStatus::Idle {
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
        self.stmts
            .insert(p.name.to_vec(), super::prepared::ClientStmt::new(def));
        self.push_synthetic(Bytes::from_static(PARSE_COMPLETE));
        Ok(true)
    }

    /// `cache_unnamed_statements`: the client's unnamed statement becomes the client
    /// statement [`UNNAMED_KEY`], so it is shared, cached and re-prepared like a named one.
    /// A Parse of the unnamed statement replaces it (no 42P05, as PostgreSQL), a Bind,
    /// Describe or Close of it refers to it while it exists, and a simple Query destroys it
    /// (PostgreSQL's rule); while it does not exist such frames pass unchanged, so the
    /// server answers them as PostgreSQL would.
    fn name_unnamed(&mut self, frame: Bytes) -> Result<Bytes, End> {
        let exists = self.stmts.contains_key(UNNAMED_KEY);
        let mut out = bytes::BytesMut::new();
        match frame[0] {
            b'Q' => {
                self.stmts.remove(UNNAMED_KEY);
                return Ok(frame);
            }
            b'P' => {
                let p = protocol::parse_parse(&frame)?;
                if !p.name.is_empty() {
                    return Ok(frame);
                }
                protocol::parse_msg(&mut out, UNNAMED_KEY, p.query, p.param_types);
            }
            b'B' if exists => {
                let b = protocol::parse_bind(&frame)?;
                if !b.statement.is_empty() {
                    return Ok(frame);
                }
                protocol::bind_msg(&mut out, b.portal, UNNAMED_KEY, b.rest);
            }
            tag @ (b'D' | b'C') if exists => {
                let (kind, name) = protocol::parse_target(&frame)?;
                if kind != b'S' || !name.is_empty() {
                    return Ok(frame);
                }
                protocol::target_msg(&mut out, tag, b'S', UNNAMED_KEY);
            }
            _ => return Ok(frame),
        }
        Ok(out.freeze())
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

    pub(super) fn forward_extended(&mut self, frame: Bytes) -> Result<(), End> {
        match frame[0] {
            b'P' => {
                let p = protocol::parse_parse(&frame)?;
                let set = maybe_set(p.query);
                self.note_session_change(p.query);
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
                        if self.rewrite {
                            self.unnamed_stmt =
                                Some((frame.slice_ref(p.query), frame.slice_ref(p.param_types)));
                            self.unnamed_here = true;
                        }
                        let sql = String::from_utf8_lossy(p.query);
                        self.unnamed_reads_sequence = state::reads_sequence_state(&sql);
                        self.unnamed_sets_sequence = state::may_set_sequence_state(&sql);
                    }
                    self.sout.extend_from_slice(&frame);
                    self.pending.sent(Owed::Parse {
                        stmt: None,
                        swallow: false,
                    });
                    return Ok(());
                }
                if self.pending.skipping() {
                    // Discarded by the server (it skips to Sync): the statement is not created.
                    return Ok(());
                }
                let def = super::prepared::registry()
                    .intern(frame.slice_ref(p.query), frame.slice_ref(p.param_types));
                self.stmts.insert(
                    p.name.to_vec(),
                    super::prepared::ClientStmt::new(def.clone()),
                );
                let present = self
                    .server
                    .as_mut()
                    .is_some_and(|s| s.prepared.touch(def.id));
                if present {
                    self.push_synthetic(Bytes::from_static(PARSE_COMPLETE));
                } else {
                    self.prepare_on_server(&def, false);
                    let id = self.server.as_ref().map(|s| s.id);
                    if let Some(cs) = self.stmts.get_mut(p.name) {
                        cs.fresh_on = id;
                    }
                }
            }
            b'B' => {
                let b = protocol::parse_bind(&frame)?;
                let mut stmt = None;
                let mut refuse = None;
                let mut first_use = false;
                if b.statement.is_empty() {
                    self.ensure_unnamed();
                    self.bound_set = self.unnamed_set.clone();
                    if self.rewrite && self.unnamed_stmt.is_none() && !self.pending.skipping() {
                        // The client has no unnamed statement; the server's may be another
                        // client's. PostgreSQL's answer, and nothing runs.
                        refuse = Some(NO_UNNAMED);
                        protocol::bind_msg(&mut self.sout, b.portal, REFUSED, b.rest);
                    } else if self.unnamed_reads_sequence && !self.sequence_state_here() {
                        refuse = Some(SEQUENCE_REFUSAL);
                        protocol::bind_msg(&mut self.sout, b.portal, REFUSED, b.rest);
                    } else {
                        self.seq_set_here |= self.unnamed_sets_sequence;
                        self.sout.extend_from_slice(&frame);
                    }
                } else if !self.rewrite {
                    self.sout.extend_from_slice(&frame);
                } else {
                    let def = self.ensure_prepared(b.statement);
                    refuse = def.as_ref().and_then(|d| self.refusal(b.statement, d));
                    match def {
                        Some(def) if refuse.is_some() => {
                            // Refused by the server (no such statement): nothing runs, the
                            // server skips to Sync, and the client is told why instead.
                            protocol::bind_msg(&mut self.sout, b.portal, REFUSED, b.rest);
                            stmt = Some(def);
                        }
                        Some(def) => {
                            if def.touches_session {
                                self.note_session_change(&def.query);
                            }
                            if let Some(cs) = self.stmts.get_mut(b.statement) {
                                first_use = !std::mem::replace(&mut cs.used, true);
                            }
                            self.seq_set_here |= def.sets_sequence;
                            self.bound_set = maybe_set(&def.query);
                            protocol::bind_msg(&mut self.sout, b.portal, &def.name, b.rest);
                            stmt = Some(def);
                        }
                        None => self.sout.extend_from_slice(&frame),
                    }
                }
                if stmt.is_none() {
                    self.bound_portal = None;
                } else if !matches!(&self.bound_portal,
                    Some((p, n)) if p == b.portal && n == b.statement)
                {
                    // Allocates only when the portal or statement changes (not per Bind).
                    self.bound_portal = Some((b.portal.to_vec(), b.statement.to_vec()));
                }
                let retried = self.replaying;
                self.pending.sent(Owed::Bind {
                    stmt,
                    frame,
                    retried,
                    refuse,
                    first_use,
                });
            }
            b'D' => {
                let (kind, name) = protocol::parse_target(&frame)?;
                let mut stmt = None;
                if kind == b'S' && name.is_empty() {
                    self.ensure_unnamed();
                }
                if kind == b'S' && !name.is_empty() && self.rewrite {
                    self.prepare_afresh_for_describe(name);
                    match self.ensure_prepared(name) {
                        Some(def) => {
                            protocol::target_msg(&mut self.sout, b'D', b'S', &def.name);
                            stmt = Some(def);
                        }
                        None => self.sout.extend_from_slice(&frame),
                    }
                } else {
                    if kind == b'P' {
                        // A portal of a shared statement: its description tells the client
                        // the statement's shape too.
                        stmt = self
                            .bound_portal
                            .as_ref()
                            .filter(|(p, _)| p == name)
                            .and_then(|(_, n)| self.stmts.get(n))
                            .map(|cs| cs.def.clone());
                    }
                    self.sout.extend_from_slice(&frame);
                }
                self.pending.sent(Owed::Describe {
                    frame,
                    stmt,
                    probe: false,
                });
            }
            b'E' => {
                self.batch_executed = true;
                self.sout.extend_from_slice(&frame);
                let set = self.bound_set.take();
                self.pending.sent(Owed::Execute { set, frame });
            }
            _ => {
                // 'F' FunctionCall: answered like a simple query, with ReadyForQuery.
                self.sout.extend_from_slice(&frame);
                self.pending.sent(Owed::Function);
            }
        }
        Ok(())
    }
}

const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];

/// A Bind of the unnamed statement when the client has none.
const NO_UNNAMED: super::tracker::pending::Refusal = super::tracker::pending::Refusal {
    code: "26000",
    message: "unnamed prepared statement does not exist",
};

/// The client-side name pgvane gives a client's unnamed statement under
/// `cache_unnamed_statements`. Statement names are C strings chosen by the client; one
/// starting with a control character is not a name a driver uses.
pub(super) const UNNAMED_KEY: &[u8] = b"\x01pgvane_unnamed";
const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];
