//! Fan-out of an extended-protocol batch (Parse/Bind/Describe/Execute ... Sync) to several
//! shards, as drivers such as tokio-postgres and JDBC send it.
//!
//! Owns: translating the client's batch into one message sequence that works on any server
//! (named statements become the unnamed statement, prepared inline), running it on every
//! target shard concurrently, and merging the per-shard answers message by message into what
//! one server would have said.
//!
//! Must not: keep servers after the batch, or decide the shards (that is `route`).

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::client::session::{End, Session};
use crate::protocol;
use crate::sharding::plan::ShardSet;

/// What a message of the translated batch is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    /// CloseComplete answered by pgvane (statement close), never sent to shards.
    SyntheticClose,
    Sync,
}

/// Split one shard's answers into per-unit groups. Err: the shard reported an error.
fn split_units(frames: &[Bytes], units: &[(Unit, bool)]) -> Result<Vec<Vec<Bytes>>, Bytes> {
    let mut it = frames
        .iter()
        .filter(|f| !matches!(f[0], b'N' | b'S' | b'A'))
        .peekable();
    let mut out = Vec::with_capacity(units.len());
    for (u, _) in units {
        let mut group = Vec::new();
        if *u == Unit::SyntheticClose {
            out.push(group);
            continue;
        }
        loop {
            let Some(f) = it.next() else { return Ok(out) };
            if f[0] == b'E' {
                return Err(f.clone());
            }
            group.push(f.clone());
            let done = match u {
                Unit::Parse => f[0] == b'1',
                Unit::Bind => f[0] == b'2',
                Unit::DescribeStatement | Unit::DescribePortal => matches!(f[0], b'T' | b'n'),
                Unit::Execute => matches!(f[0], b'C' | b'I' | b's'),
                Unit::Close => f[0] == b'3',
                Unit::Sync => f[0] == b'Z',
                Unit::SyntheticClose => true,
            };
            if done {
                break;
            }
        }
        out.push(group);
    }
    Ok(out)
}

impl Session {
    /// Run the batch that starts with `first` on `shards`. The batch (through Sync) is taken
    /// from the client buffer; the merged answer is queued for the client.
    pub(crate) async fn fanout_extended(
        &mut self,
        first: Bytes,
        shards: ShardSet,
        write: bool,
    ) -> Result<(), End> {
        // The whole batch must be here: drivers send it in one go.
        let mut frames = vec![first];
        while frames.last().is_some_and(|f| f[0] != b'S') {
            match protocol::split_frame(&mut self.cin, self.max_message)? {
                Some(f) => frames.push(f),
                None => {
                    self.client_error(
                        "0A000",
                        "a statement that spans several shards must arrive with its Sync in one batch",
                    );
                    self.skip_until_sync = true;
                    return Ok(());
                }
            }
        }
        // COPY needs the simple protocol here (its data must be split or merged per shard).
        let copies = frames.iter().any(|f| match f[0] {
            b'P' => protocol::parse_parse(f).is_ok_and(|p| is_copy(p.query)),
            b'B' => protocol::parse_bind(f).is_ok_and(|b| {
                self.stmts
                    .get(b.statement)
                    .is_some_and(|d| is_copy(&d.query))
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
        // Translate: named statements become the unnamed statement, prepared inline.
        let mut out = BytesMut::new();
        let mut units: Vec<(Unit, bool)> = Vec::new();
        let mut unnamed_holds: Option<Vec<u8>> = None;
        for f in &frames {
            match f[0] {
                b'P' => {
                    let p = protocol::parse_parse(f)?;
                    if !p.name.is_empty() {
                        let def = crate::client::prepared::registry()
                            .intern(f.slice_ref(p.query), f.slice_ref(p.param_types));
                        self.stmts.insert(p.name.to_vec(), def);
                        let info = self.route_info(p.query, p.param_types);
                        self.routes.insert(p.name.to_vec(), info);
                    }
                    protocol::parse_msg(&mut out, b"", p.query, p.param_types);
                    units.push((Unit::Parse, true));
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
                        let Some(def) = self.stmts.get(&stmt).cloned() else {
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
                        protocol::parse_msg(&mut out, b"", &def.query, &def.param_types);
                        units.push((Unit::Parse, false));
                        unnamed_holds = Some(stmt.clone());
                    }
                    if f[0] == b'B' {
                        let b = protocol::parse_bind(f)?;
                        protocol::bind_msg(&mut out, b.portal, b"", b.rest);
                        units.push((Unit::Bind, true));
                    } else if portal_describe {
                        out.extend_from_slice(f);
                        units.push((Unit::DescribePortal, true));
                    } else {
                        protocol::target_msg(&mut out, b'D', b'S', b"");
                        units.push((Unit::DescribeStatement, true));
                    }
                }
                b'E' => {
                    out.extend_from_slice(f);
                    units.push((Unit::Execute, true));
                }
                b'C' => {
                    let (kind, name) = protocol::parse_target(f)?;
                    if kind == b'S' {
                        self.stmts.remove(name);
                        self.routes.remove(name);
                        units.push((Unit::SyntheticClose, true));
                    } else {
                        out.extend_from_slice(f);
                        units.push((Unit::Close, true));
                    }
                }
                b'S' => {
                    out.extend_from_slice(f);
                    units.push((Unit::Sync, true));
                }
                _ => {} // Flush: nothing to answer
            }
        }
        let status = self.pending.tx().byte();
        let db = self.ctx.db.clone();
        db.stats
            .fanout
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(mut conns) = self.checkout_shards(shards, status).await else {
            return Ok(());
        };
        let mut payload = BytesMut::new();
        if write {
            protocol::query(&mut payload, "BEGIN");
        }
        payload.extend_from_slice(&out);
        let zs = if write { 2 } else { 1 };
        let payload = payload.freeze();
        let results = futures_util::future::join_all(conns.iter_mut().map(|(_, c)| {
            let payload = payload.clone();
            async move {
                c.stream
                    .write_all(&payload)
                    .await
                    .map_err(crate::server::ServerError::Io)?;
                let mut frames = Vec::new();
                let mut seen = 0;
                while seen < zs {
                    let f = c.read_frame().await?;
                    if f[0] == b'Z' {
                        seen += 1;
                    }
                    frames.push(f);
                }
                Ok::<_, crate::server::ServerError>(frames)
            }
        }))
        .await;
        let mut groups = Vec::with_capacity(results.len());
        let mut error: Option<Bytes> = None;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(mut frames) => {
                    if write {
                        if let Some(z) = frames.iter().position(|f| f[0] == b'Z') {
                            frames.drain(..=z);
                        }
                    }
                    match split_units(&frames, &units) {
                        Ok(g) if g.len() == units.len() => groups.push(g),
                        Ok(_) => {
                            conns[i].1.broken = true;
                            error.get_or_insert_with(|| {
                                error_frame("XX000", "shard answer incomplete")
                            });
                        }
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                Err(e) => {
                    conns[i].1.broken = true;
                    let msg = format!("shard {}: {e}", conns[i].0);
                    error.get_or_insert_with(|| error_frame("08006", &msg));
                }
            }
        }
        let mut ok = error.is_none();
        let mut merged = BytesMut::new();
        if ok {
            if let Err(msg) = merge_units(&groups, &units, status, &mut merged) {
                ok = false;
                error = Some(error_frame("XX000", &msg));
                merged.clear();
            }
        }
        if let Some(e) = &error {
            let code = protocol::parse_error(e).code;
            crate::metrics::count_error(&self.ctx.database, &code);
            merged.extend_from_slice(e);
            protocol::ready_for_query(&mut merged, status);
        }
        self.cout.extend_from_slice(&merged);
        if write {
            let end = if ok { "COMMIT" } else { "ROLLBACK" };
            for (_, c) in conns.iter_mut() {
                if !c.broken && !matches!(c.run_internal(end).await, Ok(None)) {
                    c.broken = true;
                }
            }
            if ok {
                self.tx_wrote = true;
            }
        }
        for (_, c) in conns {
            if !c.broken {
                let p = c.pool.clone();
                p.put(c);
            }
        }
        Ok(())
    }
}

/// Does this statement text start with COPY?
fn is_copy(sql: &[u8]) -> bool {
    let s = String::from_utf8_lossy(sql);
    crate::params::skip_ws_comments(&s)
        .get(..4)
        .is_some_and(|h| h.eq_ignore_ascii_case("copy"))
}

fn error_frame(code: &str, msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    protocol::error_response(&mut b, "ERROR", code, msg);
    b.freeze()
}

/// Merge per-shard unit groups: shard 0 answers everything once, except Execute, whose rows
/// come from every shard with one CommandComplete carrying the total.
fn merge_units(
    groups: &[Vec<Vec<Bytes>>],
    units: &[(Unit, bool)],
    status: u8,
    out: &mut BytesMut,
) -> Result<(), String> {
    let Some(first) = groups.first() else {
        return Ok(());
    };
    for (i, (u, visible)) in units.iter().enumerate() {
        if !visible {
            continue;
        }
        match u {
            Unit::SyntheticClose => protocol::close_complete(out),
            // The shards' own status may say "in transaction" (writes run inside BEGIN).
            Unit::Sync => protocol::ready_for_query(out, status),
            Unit::Execute => {
                let streams: Vec<Vec<Bytes>> = groups.iter().map(|g| g[i].clone()).collect();
                if super::merge_responses(&streams, out)? {
                    return Err("a shard failed".into());
                }
            }
            Unit::DescribeStatement | Unit::DescribePortal => {
                let streams: Vec<Vec<Bytes>> = groups.iter().map(|g| g[i].clone()).collect();
                let mut tmp = BytesMut::new();
                super::merge_responses(&streams, &mut tmp)?;
                out.extend_from_slice(&tmp);
            }
            _ => {
                for f in &first[i] {
                    out.extend_from_slice(f);
                }
            }
        }
    }
    Ok(())
}
