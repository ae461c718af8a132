//! Fan-out of an extended-protocol batch (Parse/Bind/Describe/Execute ... Sync) to several
//! shards, as drivers such as tokio-postgres and JDBC send it.
//!
//! Owns: translating the client's batch into one message sequence that works on any server
//! (named statements become the unnamed statement, prepared inline), running it on every
//! target shard, and streaming the merged answer to the client as the shards produce it (the
//! merge is [`super::merge`]; memory stays bounded by the shard count, not the result size).
//!
//! Must not: keep servers after the batch, or decide the shards (that is `route`).

use bytes::{Bytes, BytesMut};

use super::merge::{CopyOut, Merge};
use tokio::io::AsyncReadExt;

use crate::client::session::{End, Session};
use crate::protocol;
use crate::sharding::plan::ShardSet;

/// An extended-protocol INSERT split by shard: each part's (shard, text), and the client's
/// parameter numbers behind each part's `$1, $2, ...`.
pub(crate) type SplitInsert = (Vec<(u32, String)>, Vec<Vec<usize>>);

/// The largest extended-protocol batch run on several shards.
const BATCH_LIMIT: usize = 1024 * 1024;

impl Session {
    /// Run the batch that starts with `first` on `shards`. The batch (through Sync) is taken
    /// from the client buffer; the merged answer is queued for the client.
    pub(crate) async fn fanout_extended(
        &mut self,
        first: Bytes,
        shards: ShardSet,
        write: bool,
        replicated: bool,
        split: Option<SplitInsert>,
    ) -> Result<(), End> {
        let Some(frames) = self.take_batch(first).await? else {
            return Ok(());
        };
        // COPY needs the simple protocol here (its data must be split or merged per shard).
        let copies = frames.iter().any(|f| match f[0] {
            b'P' => protocol::parse_parse(f).is_ok_and(|p| is_copy(p.query)),
            b'B' => protocol::parse_bind(f).is_ok_and(|b| {
                self.stmts
                    .get(b.statement)
                    .is_some_and(|d| is_copy(&d.def.query))
            }),
            _ => false,
        });
        if copies {
            self.client_error(
                "0A000",
                "COPY on a sharded database is supported over the simple query protocol only (psql's \\copy, or send it as a simple query)",
            );
            protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
            return Ok(());
        }
        // Translate: named statements become the unnamed statement, prepared inline. A split
        // INSERT gets one translation per part (its text, its subset of the parameters).
        let parts: Vec<Option<(&str, &[usize])>> = match &split {
            Some((texts, maps)) => texts
                .iter()
                .zip(maps)
                .map(|((_, q), m)| Some((q.as_str(), m.as_slice())))
                .collect(),
            None => vec![None],
        };
        let mut payloads: Vec<Bytes> = Vec::new();
        let mut parses: Vec<bool> = Vec::new();
        for (k, part) in parts.iter().enumerate() {
            let first_pass = k == 0;
            let mut out = BytesMut::new();
            let mut these: Vec<bool> = Vec::new();
            let mut unnamed_holds: Option<Vec<u8>> = None;
            for f in &frames {
                match f[0] {
                    b'P' => {
                        let p = protocol::parse_parse(f)?;
                        if !p.name.is_empty() && first_pass {
                            let def = crate::client::prepared::registry()
                                .intern(f.slice_ref(p.query), f.slice_ref(p.param_types));
                            self.stmts.insert(
                                p.name.to_vec(),
                                crate::client::prepared::ClientStmt::new(def),
                            );
                            let info = self.route_info(p.query, p.param_types);
                            self.routes.insert(p.name.to_vec(), info);
                        }
                        match part {
                            Some((q, map)) => protocol::parse_msg(
                                &mut out,
                                b"",
                                q.as_bytes(),
                                &subset_types(p.param_types, map),
                            ),
                            None => protocol::parse_msg(&mut out, b"", p.query, p.param_types),
                        }
                        these.push(true);
                        unnamed_holds = Some(p.name.to_vec());
                    }
                    b'B' | b'D' => {
                        let (stmt, portal_describe) = if f[0] == b'B' {
                            (protocol::parse_bind(f)?.statement.to_vec(), false)
                        } else {
                            let (kind, name) = protocol::parse_target(f)?;
                            (name.to_vec(), kind == b'P')
                        };
                        if !portal_describe && unnamed_holds.as_deref() != Some(&stmt[..]) {
                            let Some(def) = self.stmts.get(&stmt).map(|c| c.def.clone()) else {
                                self.client_error(
                                    "26000",
                                    &format!(
                                        "prepared statement \"{}\" does not exist",
                                        String::from_utf8_lossy(&stmt)
                                    ),
                                );
                                protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
                                return Ok(());
                            };
                            match part {
                                Some((q, map)) => protocol::parse_msg(
                                    &mut out,
                                    b"",
                                    q.as_bytes(),
                                    &subset_types(&def.param_types, map),
                                ),
                                None => {
                                    protocol::parse_msg(&mut out, b"", &def.query, &def.param_types)
                                }
                            }
                            these.push(false);
                            unnamed_holds = Some(stmt.clone());
                        }
                        if f[0] == b'B' {
                            let b = protocol::parse_bind(f)?;
                            match part {
                                Some((_, map)) => {
                                    let Some(rest) = subset_bind(b.rest, map) else {
                                        return Err(End::Fatal(
                                            "08P01",
                                            "malformed Bind message".into(),
                                        ));
                                    };
                                    protocol::bind_msg(&mut out, b.portal, b"", &rest)
                                }
                                None => protocol::bind_msg(&mut out, b.portal, b"", b.rest),
                            }
                        } else if portal_describe {
                            out.extend_from_slice(f);
                        } else {
                            protocol::target_msg(&mut out, b'D', b'S', b"");
                        }
                    }
                    b'E' => {
                        if protocol::execute_max_rows(f).is_some_and(|n| n > 0) {
                            self.client_error("0A000", super::merge::ROW_LIMIT);
                            protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
                            return Ok(());
                        }
                        out.extend_from_slice(f);
                    }
                    b'C' => {
                        let (kind, name) = protocol::parse_target(f)?;
                        if kind == b'S' && first_pass {
                            // The client's name goes; shared statements stay. The shards answer
                            // CloseComplete in its place (closing an unknown name is no error).
                            self.stmts.remove(name);
                            self.routes.remove(name);
                            protocol::target_msg(&mut out, b'C', b'S', b"pgvane_fanout_none");
                        } else {
                            out.extend_from_slice(f);
                        }
                    }
                    b'S' => out.extend_from_slice(f),
                    _ => {} // Flush: nothing to answer
                }
            }
            if first_pass {
                parses = these;
            }
            payloads.push(out.freeze());
        }
        let status = self.pending.tx().byte();
        let db = self.ctx.db.clone();
        db.stats
            .fanout
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(mut conns) = self.checkout_shards(shards, status).await else {
            return Ok(());
        };
        let mut m = Merge::new(conns.len(), CopyOut::default(), write)
            .parse_completes(parses)
            .replicated(replicated);
        for (i, (s, c)) in conns.iter_mut().enumerate() {
            let mut begin = BytesMut::new();
            if write {
                protocol::query(&mut begin, "BEGIN");
            }
            let which = match &split {
                Some((texts, _)) => texts.iter().position(|(shard, _)| shard == s).unwrap_or(0),
                None => 0,
            };
            begin.extend_from_slice(&payloads[which]);
            super::send_to_shard(i, *s, c, &begin, write, &mut m, &mut self.cout).await;
        }
        self.stream_merge(&mut conns, &mut m).await?;
        self.end_fanout(conns, m, write, write).await;
        protocol::ready_for_query(&mut self.cout, status);
        Ok(())
    }
    /// The batch that starts with `first`, through its Sync (read on from the client if it
    /// is still arriving; at most BATCH_LIMIT, since it is held while the shards run it).
    /// None: refused (the error is queued and the rest of the batch will be skipped).
    pub(crate) async fn take_batch(&mut self, first: Bytes) -> Result<Option<Vec<Bytes>>, End> {
        let mut frames = vec![first];
        let mut size = frames[0].len();
        while frames.last().is_some_and(|f| !matches!(f[0], b'S' | b'H')) {
            match protocol::split_frame(&mut self.cin, self.max_message)? {
                Some(f) => {
                    size += f.len();
                    frames.push(f);
                }
                None if size + self.cin.len() <= BATCH_LIMIT => {
                    self.cin.reserve(8192);
                    if self
                        .client
                        .read_buf(&mut self.cin)
                        .await
                        .map_err(|_| End::ClientGone)?
                        == 0
                    {
                        return Err(End::ClientGone);
                    }
                }
                None => break,
            }
        }
        if frames.last().is_none_or(|f| f[0] != b'S') {
            // A batch ended by Flush waits for its answers before its Sync (psycopg's
            // pipeline); one larger than BATCH_LIMIT is not held.
            self.client_error(
                "0A000",
                "a statement that spans several shards must be sent with its Sync (not ended by Flush, at most 1 MiB); add a sharding key or a /* pgvane: shard=N */ hint",
            );
            self.skip_until_sync = true;
            return Ok(None);
        }
        Ok(Some(frames))
    }

    /// Run a batch whose statement needs its shards' answers finished
    /// ([`Session::fanout_finish_extended`]).
    pub(crate) async fn fanout_merged_extended(
        &mut self,
        first: Bytes,
        shards: ShardSet,
        finish: std::sync::Arc<crate::sharding::combine::Finish>,
    ) -> Result<(), End> {
        let Some(frames) = self.take_batch(first).await? else {
            return Ok(());
        };
        // The statement: parsed in this batch, or prepared earlier under its name.
        let mut stmt: Option<(Bytes, Bytes)> = None;
        for f in &frames {
            match f[0] {
                b'P' => {
                    let p = protocol::parse_parse(f)?;
                    if !p.name.is_empty() {
                        let def = crate::client::prepared::registry()
                            .intern(f.slice_ref(p.query), f.slice_ref(p.param_types));
                        self.stmts.insert(
                            p.name.to_vec(),
                            crate::client::prepared::ClientStmt::new(def),
                        );
                        let info = self.route_info(p.query, p.param_types);
                        self.routes.insert(p.name.to_vec(), info);
                    }
                    stmt = Some((f.slice_ref(p.query), f.slice_ref(p.param_types)));
                }
                b'B' if stmt.is_none() => {
                    let b = protocol::parse_bind(f)?;
                    stmt = self
                        .stmts
                        .get(b.statement)
                        .map(|c| (c.def.query.clone(), c.def.param_types.clone()));
                }
                _ => {}
            }
        }
        let Some((query, types)) = stmt else {
            self.client_error("26000", "prepared statement does not exist");
            protocol::ready_for_query(&mut self.cout, self.pending.tx().byte());
            return Ok(());
        };
        let db = self.ctx.db.clone();
        db.stats
            .fanout
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.fanout_finish_extended(finish, &frames, &query, &types, shards)
            .await
    }
}

/// A Parse's parameter-type section (count, OIDs) for a part that uses the client's
/// parameters `map` (1-based), in order; 0 (unspecified) where the client gave none.
fn subset_types(types: &[u8], map: &[usize]) -> Vec<u8> {
    let oid = |n: usize| -> [u8; 4] {
        let at = 2 + 4 * (n - 1);
        match types.get(at..at + 4) {
            Some(b) => [b[0], b[1], b[2], b[3]],
            None => [0; 4],
        }
    };
    let mut out = (map.len() as i16).to_be_bytes().to_vec();
    for &n in map {
        out.extend_from_slice(&oid(n.max(1)));
    }
    out
}

/// A Bind's tail (parameter formats, parameters, result formats) with only the parameters
/// `map` (1-based), in order. None if malformed.
fn subset_bind(rest: &[u8], map: &[usize]) -> Option<BytesMut> {
    let rd16 = |at: usize| -> Option<i16> {
        Some(i16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]))
    };
    let nfmt = rd16(0)?.max(0) as usize;
    let code = |i: usize| -> Option<i16> {
        match nfmt {
            0 => Some(0),
            1 => rd16(2),
            _ => rd16(2 + 2 * i),
        }
    };
    let mut at = 2 + 2 * nfmt;
    let np = rd16(at)?.max(0) as usize;
    at += 2;
    let mut values: Vec<&[u8]> = Vec::with_capacity(np);
    for _ in 0..np {
        let l = rest.get(at..at + 4)?;
        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        let end = at + 4 + len.max(0) as usize;
        values.push(rest.get(at..end)?);
        at = end;
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&(map.len() as i16).to_be_bytes());
    for &n in map {
        out.extend_from_slice(&code(n.checked_sub(1)?)?.to_be_bytes());
    }
    out.extend_from_slice(&(map.len() as i16).to_be_bytes());
    for &n in map {
        out.extend_from_slice(values.get(n.checked_sub(1)?)?);
    }
    out.extend_from_slice(rest.get(at..)?);
    Some(out)
}

/// Does this statement text start with COPY?
fn is_copy(sql: &[u8]) -> bool {
    let s = String::from_utf8_lossy(sql);
    crate::params::skip_ws_comments(&s)
        .get(..4)
        .is_some_and(|h| h.eq_ignore_ascii_case("copy"))
}
