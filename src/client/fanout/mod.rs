//! Running one client statement on several shards at once and merging the answers.
//!
//! Owns: checking out one server per target shard, sending the statement to all of them,
//! wrapping multi-shard writes in a transaction on every shard (committed only when every
//! shard succeeded, rolled back everywhere otherwise), and streaming the merged answer to
//! the client as the shards produce it (the merge itself is [`merge`]; COPY FROM STDIN is
//! [`copy`]). Reads from the shards only as fast as the client takes the answer.
//!
//! Must not: route (the plan comes from `route`), hold a result in memory, or keep servers
//! after the statement; a server whose state is unknown is closed, never pooled.

mod copy;
mod copy_format;
mod extended;
mod finish;
pub mod merge;
mod order;
mod stream;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::session::{End, Session};
use crate::params;
use crate::pool::PooledConn;
use crate::protocol;
use crate::sharding::plan::ShardSet;
use copy_format::{CopyKind, Format};
use merge::{CopyOut, Merge, Need};

/// Send the client what is queued once this much is (the backpressure unit).
const CLIENT_FLUSH_AT: usize = 64 * 1024;
/// After an error, a shard is read to ReadyForQuery up to this many bytes, else closed.
const DRAIN_BUDGET: usize = 1024 * 1024;

/// Statements PostgreSQL refuses inside a transaction block: broadcast without a wrapper.
fn needs_autocommit(sql: &str) -> bool {
    let s = params::skip_ws_comments(sql).to_ascii_lowercase();
    [
        "vacuum",
        "create database",
        "drop database",
        "reindex",
        "cluster",
        "alter system",
        "create tablespace",
        "drop tablespace",
    ]
    .iter()
    .any(|p| s.starts_with(p))
        || s.contains("concurrently")
}

/// Merge per-shard response streams (each without its final ReadyForQuery) into `out`.
/// Returns Err(message) when the shards disagree on the shape of the result; Ok(true) when a
/// shard reported an error (forwarded once), Ok(false) on success.
pub fn merge_responses(streams: &[Vec<Bytes>], out: &mut BytesMut) -> Result<bool, String> {
    if let Some(err) = streams.iter().flat_map(|s| s.iter()).find(|f| f[0] == b'E') {
        out.extend_from_slice(err);
        return Ok(true);
    }
    // Chunks: the DataRows before each non-DataRow message, and that message.
    type Chunk<'a> = (Vec<&'a Bytes>, &'a Bytes);
    let chunked: Vec<Vec<Chunk>> = streams
        .iter()
        .map(|s| {
            let mut chunks = Vec::new();
            let mut rows = Vec::new();
            for f in s {
                match f[0] {
                    b'D' => rows.push(f),
                    b'N' | b'S' | b'A' => {}
                    _ => chunks.push((std::mem::take(&mut rows), f)),
                }
            }
            chunks
        })
        .collect();
    let Some(first) = chunked.first() else {
        return Ok(false);
    };
    if chunked.iter().any(|c| c.len() != first.len()) {
        return Err("shards returned results of different shapes".into());
    }
    for j in 0..first.len() {
        for c in &chunked {
            for r in &c[j].0 {
                out.extend_from_slice(r);
            }
        }
        let term = first[j].1;
        match term[0] {
            b'T' => {
                if chunked.iter().any(|c| !same_columns(c[j].1, term)) {
                    return Err("shards returned different row descriptions".into());
                }
                out.extend_from_slice(term);
            }
            b'C' => {
                let tags: Vec<&[u8]> = chunked
                    .iter()
                    .map(|c| protocol::command_tag(c[j].1))
                    .collect();
                protocol::command_complete(out, &merge_tags(&tags));
            }
            _ => out.extend_from_slice(term),
        }
    }
    Ok(false)
}

/// Two RowDescriptions describe the same columns: names, types, type modifiers and formats
/// agree (table OIDs and column numbers differ between shards and do not matter).
pub(crate) fn same_columns(a: &[u8], b: &[u8]) -> bool {
    fn columns(f: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
        let mut body = f.get(5..)?;
        let n = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
        body = &body[2..];
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let name = protocol::read_cstr(&mut body).ok()?;
            // table oid (4) + attnum (2), then type oid (4) typlen (2) typmod (4) format (2)
            let rest = body.get(6..18)?;
            out.push((name, rest));
            body = body.get(18..)?;
        }
        Some(out)
    }
    match (columns(a), columns(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// "SELECT 3" + "SELECT 4" = "SELECT 7"; "INSERT 0 2" + "INSERT 0 1" = "INSERT 0 3".
pub fn merge_tags(tags: &[&[u8]]) -> String {
    let first = String::from_utf8_lossy(tags.first().copied().unwrap_or_default()).into_owned();
    let Some((prefix, _)) = first.rsplit_once(' ') else {
        return first;
    };
    let counted = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE",
    ];
    if !counted
        .iter()
        .any(|c| prefix == *c || prefix.starts_with(&format!("{c} ")))
    {
        return first;
    }
    let mut total: u64 = 0;
    for t in tags {
        let t = String::from_utf8_lossy(t);
        match t
            .rsplit_once(' ')
            .and_then(|(p, n)| (p == prefix).then(|| n.parse::<u64>().ok()).flatten())
        {
            Some(n) => total += n,
            None => return first,
        }
    }
    format!("{prefix} {total}")
}

/// Count a multi-shard statement: once on every shard it ran on, once for the database.
pub(crate) fn account_fanout<'a>(conns: impl IntoIterator<Item = &'a PooledConn>) {
    use std::sync::atomic::Ordering::Relaxed;
    for (i, c) in conns.into_iter().enumerate() {
        let st = &c.pool.stats;
        st.query_count.fetch_add(1, Relaxed);
        st.xact_count.fetch_add(1, Relaxed);
        if i > 0 {
            st.fanout_extra.fetch_add(1, Relaxed);
        }
    }
}

impl Session {
    /// One server per target shard (primaries), with the client's settings applied. On
    /// failure the error and a ReadyForQuery(`status`) are queued and None is returned.
    pub(crate) async fn checkout_shards(
        &mut self,
        shards: ShardSet,
        status: u8,
    ) -> Option<Vec<(u32, PooledConn)>> {
        let mut conns: Vec<(u32, PooledConn)> = Vec::new();
        for s in shards.iter() {
            let pool = self.ctx.pools.shards[s as usize].primary.clone();
            let failure = match pool.get().await {
                Ok(mut c) => match params::sync_sql(&self.effective, &c.params) {
                    None => {
                        conns.push((s, c));
                        continue;
                    }
                    Some(q) => {
                        if matches!(c.run_internal(&q).await, Ok(None)) && !c.broken {
                            for n in c.notifications.drain(..) {
                                self.cout.extend_from_slice(&n);
                            }
                            c.params = self.effective.clone();
                            conns.push((s, c));
                            continue;
                        }
                        (
                            "08006",
                            format!("shard {s}: applying session settings failed"),
                        )
                    }
                },
                Err(e) => {
                    let (code, msg) = e.sqlstate();
                    (code, format!("shard {s}: {msg}"))
                }
            };
            self.client_error(failure.0, &failure.1);
            protocol::ready_for_query(&mut self.cout, status);
            for (_, c) in conns {
                let p = c.pool.clone();
                p.put(c);
            }
            return None;
        }
        Some(conns)
    }

    /// Run a simple Query on `shards` (optionally a different SQL text per shard), streaming
    /// the merged answer to the client.
    pub(super) async fn fanout_query(
        &mut self,
        frame: Bytes,
        shards: ShardSet,
        write: bool,
        split: Option<Vec<(u32, String)>>,
        finish: Option<std::sync::Arc<crate::sharding::combine::Finish>>,
        replicated: bool,
    ) -> Result<(), End> {
        let db = self.ctx.db.clone();
        let in_tx = self.server.is_some() || self.deferred_begin.is_some();
        let status = if in_tx {
            self.pending.tx().byte()
        } else {
            b'I'
        };
        if write && in_tx {
            self.client_error("0A000",
                "a write transaction cannot touch more than one shard (two-phase commit across shards is not supported yet)",
            );
            protocol::ready_for_query(&mut self.cout, status);
            return Ok(());
        }
        db.stats
            .fanout
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sql = protocol::query_text(&frame)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        if let Some(f) = finish {
            return self.fanout_finish(f, &sql, shards, status).await;
        }
        let mut copy_out = CopyOut::default();
        if split.is_none() {
            match copy::classify_sql(&sql, &db.sharded_tables) {
                Some(Err(e)) => {
                    self.cout.extend_from_slice(&copy::error_frame(&e));
                    crate::metrics::count_error(&self.ctx.database, e.code);
                    protocol::ready_for_query(&mut self.cout, status);
                    return Ok(());
                }
                Some(Ok(kind @ CopyKind::FromStdin { .. })) => {
                    return self.copy_in(&sql, kind, shards, status).await;
                }
                Some(Ok(CopyKind::ToStdout { options })) => {
                    copy_out = CopyOut {
                        header: options.header && options.format != Format::Binary,
                        binary: options.format == Format::Binary,
                    };
                }
                None => {}
            }
        }
        let wrap = write && !needs_autocommit(&sql);
        let Some(mut conns) = self.checkout_shards(shards, status).await else {
            return Ok(());
        };
        let mut m = Merge::new(conns.len(), copy_out, wrap).replicated(replicated);
        for (i, (s, c)) in conns.iter_mut().enumerate() {
            let mut out = BytesMut::new();
            if wrap {
                protocol::query(&mut out, "BEGIN");
            }
            match split
                .as_ref()
                .and_then(|parts| parts.iter().find(|(p, _)| p == s))
            {
                Some((_, q)) => protocol::query(&mut out, q),
                None => out.extend_from_slice(&frame),
            }
            send_to_shard(i, *s, c, &out, wrap, &mut m, &mut self.cout).await;
        }
        self.stream_merge(&mut conns, &mut m).await?;
        self.end_fanout(conns, m, wrap, write).await;
        protocol::ready_for_query(&mut self.cout, status);
        Ok(())
    }

    /// Feed the shards' answers through the merge, reading each shard only as the merge asks
    /// and flushing to the client as the output grows (a slow client slows the shards).
    pub(crate) async fn stream_merge(
        &mut self,
        conns: &mut [(u32, PooledConn)],
        m: &mut Merge,
    ) -> Result<(), End> {
        let mut drained = vec![0usize; conns.len()];
        while let Need::Read(i) = m.next() {
            let Some((s, c)) = conns.get_mut(i) else {
                break;
            };
            match c.read_frame().await {
                Ok(f) => {
                    if f[0] == b'G' {
                        // COPY FROM STDIN inside a multi-statement query: end it on the shard.
                        let mut fail = BytesMut::new();
                        copy::copy_fail(&mut fail, "COPY FROM STDIN cannot be merged");
                        if c.stream.write_all(&fail).await.is_err() {
                            c.broken = true;
                            m.lost(i, None, &mut self.cout);
                            continue;
                        }
                    }
                    if m.draining() {
                        drained[i] += f.len();
                        if drained[i] > DRAIN_BUDGET {
                            // Too much left to read: closing the server is cheaper.
                            c.broken = true;
                            m.lost(i, None, &mut self.cout);
                            continue;
                        }
                    }
                    if f[0] == b'E' && !m.failed() {
                        let code = protocol::parse_error(&f).code;
                        crate::metrics::count_error(&self.ctx.database, &code);
                    }
                    m.feed(i, f, &mut self.cout);
                }
                Err(e) => {
                    c.broken = true;
                    m.lost(i, Some(&format!("shard {s}: {e}")), &mut self.cout);
                }
            }
            if self.cout.len() >= CLIENT_FLUSH_AT {
                self.flush_client().await?;
            }
        }
        Ok(())
    }

    /// After the merge: commit a wrapped write everywhere (or roll it back everywhere), send
    /// the held final tag if all went well, and give the servers back.
    pub(crate) async fn end_fanout(
        &mut self,
        mut conns: Vec<(u32, PooledConn)>,
        mut m: Merge,
        wrap: bool,
        write: bool,
    ) {
        let mut ok = !m.failed();
        let tail = m.take_tail();
        if wrap {
            for (s, c) in conns.iter_mut() {
                if c.broken {
                    continue;
                }
                let end = if ok { "COMMIT" } else { "ROLLBACK" };
                match c.run_internal(end).await {
                    Ok(None) => {}
                    Ok(Some(e)) => {
                        tracing::error!(shard = *s, code = %e.code, msg = %e.message, "{end} failed on a shard");
                        if ok {
                            // The shards after this one roll back; the client sees the error.
                            self.client_error(&e.code, &e.message);
                            ok = false;
                        }
                        c.broken = true;
                    }
                    Err(_) => c.broken = true,
                }
            }
        }
        if ok {
            self.cout.extend_from_slice(&tail);
        }
        if write && ok {
            self.tx_wrote = true;
        }
        account_fanout(conns.iter().map(|(_, c)| c));
        for (_, c) in conns {
            if !c.broken {
                let p = c.pool.clone();
                p.put(c);
            }
        }
    }
}

/// Send shard `i` its part of a fan-out (after `BEGIN` when `wrap`: its answer is read
/// here); a shard that fails is marked lost in the merge.
pub(crate) async fn send_to_shard(
    i: usize,
    shard: u32,
    c: &mut PooledConn,
    bytes: &[u8],
    wrap: bool,
    m: &mut Merge,
    cout: &mut BytesMut,
) {
    let sent = match c.stream.write_all(bytes).await {
        Ok(()) if wrap => begin_answer(c).await,
        Ok(()) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        c.broken = true;
        m.lost(i, Some(&format!("shard {shard}: {e}")), cout);
    }
}

/// Read the answer to the BEGIN sent before a wrapped statement (through its ReadyForQuery).
async fn begin_answer(c: &mut PooledConn) -> Result<(), String> {
    let mut err = None;
    loop {
        let f = c.read_frame().await.map_err(|e| e.to_string())?;
        match f[0] {
            b'E' => err = Some(protocol::parse_error(&f).message),
            b'Z' => return err.map_or(Ok(()), |e| Err(format!("BEGIN failed: {e}"))),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(f: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut b = BytesMut::new();
        f(&mut b);
        b.freeze()
    }

    #[test]
    fn tags_sum() {
        assert_eq!(merge_tags(&[b"SELECT 3", b"SELECT 4"]), "SELECT 7");
        assert_eq!(merge_tags(&[b"INSERT 0 2", b"INSERT 0 1"]), "INSERT 0 3");
        assert_eq!(
            merge_tags(&[b"CREATE TABLE", b"CREATE TABLE"]),
            "CREATE TABLE"
        );
        assert_eq!(merge_tags(&[b"UPDATE 1", b"UPDATE 0"]), "UPDATE 1");
    }

    #[test]
    fn merges_rows_and_counts() {
        let t = msg(|b| protocol::row_description(b, &["x"]));
        let d = |v: &'static str| msg(|b| protocol::data_row(b, &[Some(v)]));
        let c = |n: u32| msg(|b| protocol::command_complete(b, &format!("SELECT {n}")));
        let s0 = vec![t.clone(), d("a"), d("b"), c(2)];
        let s1 = vec![t.clone(), d("c"), c(1)];
        let mut out = BytesMut::new();
        assert_eq!(merge_responses(&[s0, s1], &mut out), Ok(false));
        let mut expect = BytesMut::new();
        expect.extend_from_slice(&t);
        for v in ["a", "b", "c"] {
            expect.extend_from_slice(&d(v));
        }
        protocol::command_complete(&mut expect, "SELECT 3");
        assert_eq!(out, expect);
    }

    #[test]
    fn errors_and_mismatches() {
        let t1 = msg(|b| protocol::row_description(b, &["x"]));
        let t2 = msg(|b| protocol::row_description(b, &["y"]));
        let c = msg(|b| protocol::command_complete(b, "SELECT 0"));
        let mut out = BytesMut::new();
        assert!(merge_responses(
            &[vec![t1.clone(), c.clone()], vec![t2, c.clone()]],
            &mut out
        )
        .is_err());
        let e = msg(|b| protocol::error_response(b, "ERROR", "23505", "dup"));
        let mut out = BytesMut::new();
        assert_eq!(
            merge_responses(&[vec![t1, c], vec![e.clone()]], &mut out),
            Ok(true)
        );
        assert_eq!(&out[..], &e[..]);
    }
}
