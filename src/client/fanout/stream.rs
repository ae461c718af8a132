//! The streaming form of a merged read with ORDER BY: every shard sorts, pgvane merges the
//! sorted streams (k-way, one row per shard held), applies OFFSET and LIMIT, and drops the
//! sort-key columns it added. Memory stays bounded by the shard count, not the result size.
//!
//! Owns: deciding at run time whether the keys' types can be compared by pgvane exactly
//! ([`super::order`]; text only under a byte-order collation, checked on the first shard),
//! and the merge loop. Anything else falls back to the finishing query
//! ([`super::finish`]).
//! Must not: hold more than one row per shard, or leave a shard's answer unread: each is read
//! to its ReadyForQuery (or closed when too much is left after an error).

use std::cmp::Ordering;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::finish::{execute_msg, fields, Field};
use super::order::{self, Key};
use crate::client::session::Session;
use crate::pool::PooledConn;
use crate::protocol;
use crate::sharding::combine::Stream;

/// The client's query and the streaming partial, described on the first shard.
pub(super) struct Prepared {
    pub described: Bytes,
    pub param_desc: Option<Bytes>,
    keys: Vec<Key>,
    visible: usize,
}

pub(super) enum Prep {
    /// pgvane cannot compare the keys (or the partial did not describe): use the
    /// finishing query.
    Fallback,
    /// The client's query failed to describe: forward this error.
    Failed(Bytes),
    Ready(Prepared),
}

/// The client's Bind, as the shards get it: the Parse's parameter types, the parameters
/// (formats and values) and the result formats the client asked for.
#[derive(Clone, Copy)]
pub(super) struct Binding<'a> {
    pub param_types: &'a [u8],
    pub params: &'a [u8],
    pub formats: &'a [u8],
}

/// Collations whose order is the bytes' order.
fn byte_order_collation(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "c" | "posix" | "c.utf8" | "c.utf-8"
    )
}

/// One head row: the frame, the end of its visible columns, its key columns.
struct Head {
    frame: Bytes,
    visible_end: usize,
    keys: Vec<Option<Range<usize>>>,
}

fn head(frame: Bytes, visible: usize) -> Option<Head> {
    let b = frame.get(5..)?;
    let n = i16::from_be_bytes([*b.first()?, *b.get(1)?]).max(0) as usize;
    let mut at = 2usize;
    let mut visible_end = 2;
    let mut keys = Vec::with_capacity(n.saturating_sub(visible));
    for i in 0..n {
        let l = b.get(at..at + 4)?;
        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        at += 4;
        let range = if len < 0 {
            None
        } else {
            let r = 5 + at..5 + at + len as usize;
            at += len as usize;
            if at > b.len() {
                return None;
            }
            Some(r)
        };
        if i < visible {
            visible_end = at;
        } else {
            keys.push(range);
        }
    }
    Some(Head {
        frame,
        visible_end,
        keys,
    })
}

impl Head {
    fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys
            .get(i)
            .and_then(|r| r.clone())
            .and_then(|r| self.frame.get(r))
    }

    /// The DataRow the client sees: the visible columns only.
    fn visible_row(&self, visible: usize, out: &mut BytesMut) {
        let body = self
            .frame
            .get(5 + 2..5 + self.visible_end)
            .unwrap_or_default();
        out.put_u8(b'D');
        out.put_i32((4 + 2 + body.len()) as i32);
        out.put_i16(visible as i16);
        out.put_slice(body);
    }
}

fn cmp_heads(keys: &[Key], a: &Head, b: &Head) -> Ordering {
    for (i, k) in keys.iter().enumerate() {
        let o = k.cmp(a.key(i), b.key(i));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// A Bind's result-format section for `visible` client columns (as the client asked) and
/// `keys` binary key columns.
fn result_formats(client: &[u8], visible: usize, keys: usize) -> BytesMut {
    let n = i16::from_be_bytes([
        client.first().copied().unwrap_or(0),
        client.get(1).copied().unwrap_or(0),
    ])
    .max(0) as usize;
    let code = |i: usize| -> i16 {
        let at = 2 + 2 * if n == 1 { 0 } else { i };
        match (client.get(at), client.get(at + 1)) {
            (Some(a), Some(b)) if n > 0 => i16::from_be_bytes([*a, *b]),
            _ => 0,
        }
    };
    let mut out = BytesMut::new();
    out.put_i16((visible + keys) as i16);
    for i in 0..visible {
        out.put_i16(code(i));
    }
    for _ in 0..keys {
        out.put_i16(1);
    }
    out
}

impl Session {
    /// Describe the client's query and `stream`'s partial on `c0`; decide whether the
    /// streaming merge applies.
    pub(super) async fn stream_prepare(
        &mut self,
        stream: &Stream,
        original: &[u8],
        param_types: &[u8],
        c0: &mut PooledConn,
    ) -> Result<Prep, String> {
        let mut out = BytesMut::new();
        protocol::parse_msg(&mut out, b"", original, param_types);
        protocol::target_msg(&mut out, b'D', b'S', b"");
        protocol::parse_msg(&mut out, b"", stream.partial.as_bytes(), param_types);
        protocol::target_msg(&mut out, b'D', b'S', b"");
        protocol::sync(&mut out);
        if c0.stream.write_all(&out).await.is_err() {
            c0.broken = true;
            return Err("shard connection lost".into());
        }
        let (mut parses, mut described, mut param_desc, mut partial, mut error) =
            (0, None, None, None, None);
        loop {
            let f = c0.read_frame().await.map_err(|e| {
                c0.broken = true;
                format!("shard connection lost: {e}")
            })?;
            match f[0] {
                b'1' => parses += 1,
                b't' if parses == 1 => param_desc = Some(f),
                b'T' if parses == 1 => described = Some(f),
                b'T' => partial = fields(&f),
                b'E' if error.is_none() => error = Some((parses, f)),
                b'Z' => break,
                _ => {}
            }
        }
        match (error, described, partial) {
            // The client's own query failed (parse or semantic error): PostgreSQL's error.
            (Some((0, e)), _, _) => Ok(Prep::Failed(e)),
            (None, Some(described), Some(partial)) => {
                let visible = fields(&described).map_or(usize::MAX, |f| f.len());
                let k = stream.keys.len();
                if partial.len() != visible + k {
                    return Ok(Prep::Fallback);
                }
                let key_fields: Vec<Field> = partial[visible..].to_vec();
                if !key_fields.iter().all(|f| order::comparable(f.type_oid)) {
                    return Ok(Prep::Fallback);
                }
                for (f, sk) in key_fields.iter().zip(&stream.keys) {
                    if order::is_text(f.type_oid)
                        && f.type_oid != 19
                        && !sk.byte_collation
                        && !self.byte_order_column(c0, f).await
                    {
                        return Ok(Prep::Fallback);
                    }
                }
                let keys = key_fields
                    .iter()
                    .zip(&stream.keys)
                    .map(|(f, sk)| Key {
                        oid: f.type_oid,
                        desc: sk.desc,
                        nulls_first: sk.nulls_first,
                    })
                    .collect();
                Ok(Prep::Ready(Prepared {
                    described,
                    param_desc,
                    keys,
                    visible,
                }))
            }
            _ => Ok(Prep::Fallback),
        }
    }

    /// Is this text column (of the partial's description) ordered by bytes: a column whose
    /// collation, or the database's default collation it uses, is C-like? Expressions (no
    /// table column) are not known to be.
    async fn byte_order_column(&mut self, c0: &mut PooledConn, f: &Field) -> bool {
        if f.table_oid == 0 || f.attnum <= 0 {
            return false;
        }
        let sql = format!(
            "SELECT d.datcollate, coalesce((SELECT c.collname FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation WHERE a.attrelid = {} \
             AND a.attnum = {}), '?') FROM pg_catalog.pg_database d \
             WHERE d.datname = current_database()",
            f.table_oid, f.attnum
        );
        match c0.query_pairs(&sql).await {
            Ok((rows, None)) => rows.first().is_some_and(|(db, col)| match col.as_deref() {
                Some("default") => byte_order_collation(db),
                Some(c) => byte_order_collation(c),
                None => false,
            }),
            _ => false,
        }
    }

    /// Run the streaming merge on every shard; rows in the client's `formats`.
    /// `description`: sent first (simple Query). Queues rows, the tag or an error.
    pub(super) async fn stream_run(
        &mut self,
        stream: &Stream,
        p: &Prepared,
        bind: Binding<'_>,
        conns: &mut [(u32, PooledConn)],
        description: Option<&Bytes>,
    ) {
        let mut out = BytesMut::new();
        protocol::parse_msg(&mut out, b"", stream.partial.as_bytes(), bind.param_types);
        let mut rest = BytesMut::from(bind.params);
        rest.extend_from_slice(&result_formats(bind.formats, p.visible, p.keys.len()));
        protocol::bind_msg(&mut out, b"", b"", &rest);
        execute_msg(&mut out);
        protocol::sync(&mut out);
        for (_, c) in conns.iter_mut() {
            if c.stream.write_all(&out).await.is_err() {
                c.broken = true;
            }
        }
        if let Some(d) = description {
            self.cout.extend_from_slice(d);
        }
        tracing::debug!(partial = %stream.partial, "streaming merge of a multi-shard read");
        let n = conns.len();
        let mut heads: Vec<Option<Head>> = (0..n).map(|_| None).collect();
        let mut ready = vec![false; n];
        let mut error: Option<Bytes> = None;
        for i in 0..n {
            heads[i] = self
                .next_head(&mut conns[i], p.visible, &mut ready[i], &mut error)
                .await;
        }
        let (mut skipped, mut emitted) = (0u64, 0u64);
        while error.is_none() && stream.limit.is_none_or(|l| emitted < l) {
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                if let Some(h) = h {
                    let better = match best.and_then(|b| heads[b].as_ref()) {
                        None => true,
                        Some(b) => cmp_heads(&p.keys, h, b) == Ordering::Less,
                    };
                    if better {
                        best = Some(i);
                    }
                }
            }
            let Some(i) = best else { break };
            if let Some(h) = heads[i].take() {
                if skipped < stream.offset {
                    skipped += 1;
                } else {
                    h.visible_row(p.visible, &mut self.cout);
                    emitted += 1;
                }
            }
            heads[i] = self
                .next_head(&mut conns[i], p.visible, &mut ready[i], &mut error)
                .await;
            if self.cout.len() >= super::CLIENT_FLUSH_AT && self.flush_client().await.is_err() {
                for (_, c) in conns.iter_mut() {
                    c.broken = true;
                }
                return;
            }
        }
        // Every shard's answer is read to its end (after LIMIT at most limit + offset rows
        // are left on each; after an error the rest is skipped or the server closed).
        for (i, (_, c)) in conns.iter_mut().enumerate() {
            let mut budget = super::DRAIN_BUDGET;
            while !ready[i] && !c.broken {
                match c.read_frame().await {
                    Ok(f) => {
                        budget = budget.saturating_sub(f.len());
                        match f[0] {
                            b'Z' => ready[i] = true,
                            b'E' if error.is_none() => error = Some(f),
                            _ => {}
                        }
                        if budget == 0 {
                            c.broken = true;
                        }
                    }
                    Err(_) => c.broken = true,
                }
            }
        }
        match error {
            Some(e) => {
                let code = protocol::parse_error(&e).code;
                crate::metrics::count_error(&self.ctx.database, &code);
                self.cout.extend_from_slice(&e);
            }
            None => protocol::command_complete(&mut self.cout, &format!("SELECT {emitted}")),
        }
    }

    /// Shard `c`'s next row, or None at its end (CommandComplete, an error, ReadyForQuery).
    async fn next_head(
        &mut self,
        conn: &mut (u32, PooledConn),
        visible: usize,
        ready: &mut bool,
        error: &mut Option<Bytes>,
    ) -> Option<Head> {
        let (s, c) = conn;
        if c.broken || *ready {
            if c.broken && error.is_none() {
                *error = Some(super::finish::error_frame(
                    "08006",
                    &format!("shard {s}: connection lost"),
                ));
            }
            return None;
        }
        loop {
            let f = match c.read_frame().await {
                Ok(f) => f,
                Err(e) => {
                    c.broken = true;
                    error.get_or_insert_with(|| {
                        super::finish::error_frame("08006", &format!("shard {s}: {e}"))
                    });
                    return None;
                }
            };
            match f[0] {
                b'D' => match head(f, visible) {
                    Some(h) => return Some(h),
                    None => {
                        error.get_or_insert_with(|| {
                            super::finish::error_frame("XX000", "malformed DataRow from a shard")
                        });
                        return None;
                    }
                },
                b'C' => return None,
                b'E' => {
                    error.get_or_insert(f);
                    return None;
                }
                b'Z' => {
                    *ready = true;
                    return None;
                }
                b'N' | b'A' => self.cout.extend_from_slice(&f),
                _ => {}
            }
        }
    }
}
