//! Shared prepared statements as PostgreSQL would answer for the client's own statements.
//!
//! Owns: what pgvane adds to a client's extended-protocol messages so that statements shared
//! across clients and servers behave like the client's own: the pipelined Describe that
//! learns each server copy's result shape, waiting for it before a told client's Bind, the
//! fresh parse at a statement's first Describe, the unnamed statement parsed again where it
//! is missing, and the refusals (a changed result shape, sequence state that lives on
//! another server connection).
//!
//! Must not: decide routing or read sockets other than the held server's.

use bytes::Bytes;

use super::session::{End, Session};
use super::tracker::{state, Owed, Refusal};
use crate::protocol;

impl Session {
    /// Describe a shared statement on the server, answers swallowed, to learn its result
    /// shape there (sent with every Parse pgvane makes: pipelined, no round trip).
    pub(super) fn probe_shape(&mut self, def: &std::sync::Arc<super::prepared::StmtDef>) {
        let mut d = bytes::BytesMut::new();
        protocol::target_msg(&mut d, b'D', b'S', &def.name);
        let frame = d.freeze();
        self.sout.extend_from_slice(&frame);
        self.pending.sent(Owed::Describe {
            frame,
            stmt: Some(def.clone()),
            probe: true,
        });
    }

    /// Before a Bind of a statement whose shape the client was told: make sure the held
    /// server's shape of it is known (prepare or describe it and wait for the answer, once
    /// per statement and server), so [`Session::forward_extended`] can tell whether the
    /// client would decode rows of a shape it was never told.
    ///
    /// Returns false when the Bind must not be sent (the probe failed and pgvane ended the
    /// batch: the client's messages up to its Sync are dropped, as the server would skip them).
    pub(super) async fn learn_shape_before_bind(&mut self, frame: &Bytes) -> Result<bool, End> {
        let b = protocol::parse_bind(frame)?;
        let Some(cs) = self.stmts.get(b.statement) else {
            return Ok(true);
        };
        if b.statement.is_empty() || cs.told.is_none() || self.pending.skipping() {
            return Ok(true);
        }
        let def = cs.def.clone();
        let Some(server) = self.server.as_mut() else {
            return Ok(true);
        };
        if server.prepared.shape(def.id).is_some() {
            return Ok(true);
        }
        if server.prepared.touch(def.id) {
            self.probe_shape(&def);
        } else {
            self.prepare_on_server(&def, true);
        }
        protocol::flush_msg(&mut self.sout);
        self.pending.sent_flush();
        self.awaiting_shape = Some(def.id);
        self.flush_server().await?;
        while self.awaiting_shape.is_some() && !self.pending.is_empty() {
            let Some(server) = self.server.as_mut() else {
                break;
            };
            let server: &mut crate::server::ServerConn = server;
            protocol::read_room(&mut server.rbuf, 4096, 32 * 1024);
            let read = tokio::io::AsyncReadExt::read_buf(&mut server.stream, &mut server.rbuf);
            let n = super::session::watched("shape probe", read).await;
            match n {
                Ok(n) if n > 0 => self.on_server_data()?,
                _ => self.server_lost(true)?,
            }
        }
        self.awaiting_shape = None;
        Ok(!self.skip_until_sync)
    }

    /// The client's unnamed statement was parsed on another server connection (or before
    /// pgvane's own queries on this one): parse it here again, answer swallowed, so a Bind
    /// or Describe of it finds it as on the client's own connection.
    pub(super) fn ensure_unnamed(&mut self) {
        if self.unnamed_here || self.pending.skipping() || !self.rewrite {
            return;
        }
        let Some((query, types)) = self.unnamed_stmt.clone() else {
            return;
        };
        protocol::parse_msg(&mut self.sout, b"", &query, &types);
        self.pending.sent(Owed::Parse {
            stmt: None,
            swallow: true,
        });
        self.unnamed_here = true;
    }

    /// The first Describe of a client statement whose Parse pgvane answered from a server's
    /// existing copy: PostgreSQL would describe a statement parsed now, and parameter types
    /// are fixed when a statement is parsed (a type created again, a column whose type
    /// changed, would otherwise show the old ones). So the copy on this server is parsed
    /// again first (pipelined, answers swallowed).
    pub(super) fn prepare_afresh_for_describe(&mut self, name: &[u8]) {
        if self.replaying || self.pending.skipping() {
            return;
        }
        let Some(server_id) = self.server.as_ref().map(|s| s.id) else {
            return;
        };
        let Some(cs) = self.stmts.get_mut(name) else {
            return;
        };
        if cs.used || cs.fresh_on == Some(server_id) {
            return;
        }
        cs.fresh_on = Some(server_id);
        let def = cs.def.clone();
        if self
            .server
            .as_mut()
            .is_some_and(|s| s.prepared.touch(def.id))
        {
            self.close_stale(&def);
        }
    }
}

/// The statement a Bind names when pgvane wants the server to refuse it (see
/// `Owed::Bind::refuse`); pgvane never prepares a statement under a name with spaces.
pub(super) const REFUSED: &[u8] = b"pgvane refused statement";

pub(super) const SEQUENCE_REFUSAL: Refusal = Refusal {
    code: "0A000",
    message: state::SEQUENCE_STATE,
};

impl Session {
    /// Why the client's statement `name` must not run on the held server, if it must not:
    ///
    /// - the client was told a result shape that differs from the shape the statement has
    ///   now on this server: PostgreSQL would fail the Bind (the schema changed after the
    ///   client's Parse), and running it would hand the client rows it decodes by the old
    ///   description (not checked during a replay: the statement was just prepared again
    ///   for a client that had not seen it);
    /// - it reads sequence state (`currval`, `lastval`) this server connection does not hold
    ///   for the client.
    pub(super) fn refusal(&self, name: &[u8], def: &super::prepared::StmtDef) -> Option<Refusal> {
        if self.pending.skipping() {
            return None;
        }
        let told = self.stmts.get(name).and_then(|c| c.told);
        let now = self.server.as_ref().and_then(|s| s.prepared.shape(def.id));
        if !self.replaying && matches!((told, now), (Some(t), Some(n)) if t != n) {
            return Some(Refusal {
                code: "0A000",
                message: super::reply::RESULT_TYPE_CHANGED,
            });
        }
        if def.reads_sequence && !self.sequence_state_here() {
            return Some(SEQUENCE_REFUSAL);
        }
        None
    }

    /// The held server holds this client's sequence state (what `nextval` left for
    /// `currval`/`lastval`): it is the client's session (session pooling, pinned), nobody
    /// else used it since the client's last statement there, or a statement that may call
    /// `nextval` already ran on it in this checkout.
    pub(super) fn sequence_state_here(&self) -> bool {
        self.ctx.mode == crate::config::PoolMode::Session
            || self.pinned.is_some()
            || self.seq_continuous
            || self.seq_set_here
    }
}

/// A statement the server fails with 0A000 and `message` (single quotes doubled).
pub(super) fn refuse_sql(message: &str) -> String {
    format!(
        "DO $pgvane$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = '{}'; END$pgvane$",
        message.replace('\'', "''")
    )
}
