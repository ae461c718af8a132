//! A multi-shard read that needs more than concatenation (aggregates, GROUP BY, HAVING,
//! DISTINCT, ORDER BY, LIMIT/OFFSET): every shard runs the partial query of
//! [`crate::sharding::combine`], the first also describes the client's own query (so that
//! errors and the result's columns are PostgreSQL's own), and the finishing query runs on
//! the first shard's connection over the partial rows, passed back as binary arrays.
//!
//! Owns: that exchange, the bound on the partial rows held ([`MAX_PARTIAL_BYTES`]), and
//! turning binary DataRows into array parameters.
//! Must not: decide what is merged how (that is `combine`), or keep a server in an unknown
//! state: a server whose answer was not read to its ReadyForQuery is closed.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::super::session::{End, Session};
use super::stream::{Binding, Prep};
use crate::pool::PooledConn;
use crate::protocol;
use crate::sharding::combine::{Column, Finish};
use crate::sharding::plan::ShardSet;

/// Partial rows pgvane holds for one statement at most; beyond, the statement is refused.
pub const MAX_PARTIAL_BYTES: usize = 64 * 1024 * 1024;

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Field {
    pub name: String,
    pub type_oid: u32,
    pub table_oid: u32,
    pub attnum: i16,
}

pub(super) fn fields(frame: &[u8]) -> Option<Vec<Field>> {
    let mut b = frame.get(5..)?;
    let n = i16::from_be_bytes([*b.first()?, *b.get(1)?]);
    b = &b[2..];
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = protocol::read_cstr(&mut b).ok()?;
        let t = b.get(..10)?;
        out.push(Field {
            name: String::from_utf8_lossy(name).into_owned(),
            table_oid: u32::from_be_bytes([t[0], t[1], t[2], t[3]]),
            attnum: i16::from_be_bytes([t[4], t[5]]),
            type_oid: u32::from_be_bytes([t[6], t[7], t[8], t[9]]),
        });
        b = b.get(18..)?;
    }
    Some(out)
}

/// Binary columns of the shards' partial rows, as the elements of one array per column.
struct Columns {
    elems: Vec<BytesMut>,
    has_null: Vec<bool>,
    rows: usize,
    bytes: usize,
}

impl Columns {
    fn new(n: usize) -> Self {
        Columns {
            elems: (0..n).map(|_| BytesMut::new()).collect(),
            has_null: vec![false; n],
            rows: 0,
            bytes: 0,
        }
    }

    /// Add a DataRow; Err when it does not have the expected columns.
    fn push(&mut self, frame: &[u8]) -> Result<(), ()> {
        let mut b = frame.get(5..).ok_or(())?;
        let n = i16::from_be_bytes([*b.first().ok_or(())?, *b.get(1).ok_or(())?]);
        if n as usize != self.elems.len() {
            return Err(());
        }
        b = &b[2..];
        for i in 0..self.elems.len() {
            let len_bytes = b.get(..4).ok_or(())?;
            let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
            b = &b[4..];
            self.elems[i].put_i32(len);
            if len < 0 {
                self.has_null[i] = true;
            } else {
                let v = b.get(..len as usize).ok_or(())?;
                self.elems[i].put_slice(v);
                b = &b[len as usize..];
            }
        }
        self.rows += 1;
        self.bytes += frame.len();
        Ok(())
    }

    /// The Bind parameters: one binary one-dimensional array per column.
    fn bind_params(&self, elem_oids: &[u32], out: &mut BytesMut) {
        out.put_i16(1);
        out.put_i16(1); // every parameter binary
        out.put_i16(self.elems.len() as i16);
        for (i, e) in self.elems.iter().enumerate() {
            let header = if self.rows == 0 { 12 } else { 20 };
            out.put_i32((header + e.len()) as i32);
            out.put_i32(if self.rows == 0 { 0 } else { 1 });
            out.put_i32(self.has_null[i] as i32);
            out.put_u32(elem_oids.get(i).copied().unwrap_or(0));
            if self.rows > 0 {
                out.put_i32(self.rows as i32);
                out.put_i32(1);
            }
            out.put_slice(e);
        }
    }
}

/// `format_type` of built-in types (stable OIDs); others are looked up.
fn builtin_type(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        790 => "money",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1186 => "interval",
        1266 => "time with time zone",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return None,
    })
}

pub(super) fn execute_msg(out: &mut BytesMut) {
    out.put_u8(b'E');
    out.put_i32(9);
    out.put_u8(0);
    out.put_i32(0);
}

/// What one shard answered.
#[derive(Default)]
struct Answer {
    described: Option<Bytes>,
    param_desc: Option<Bytes>,
    partial: Option<Vec<Field>>,
    error: Option<Bytes>,
}

/// After the shards ran the partial query.
enum Partials {
    /// A shard's error (or the client's query failed to describe): forward it.
    Failed(Bytes),
    Ready {
        /// The client's query as shard 0 describes it (RowDescription, text formats).
        described: Bytes,
        /// Its ParameterDescription.
        param_desc: Option<Bytes>,
        /// The finishing query and its Bind parameters (formats and values).
        sql: String,
        params: BytesMut,
    },
}

/// A Bind's tail split into (parameter formats and values, result formats).
fn split_bind_rest(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let rd16 = |b: &[u8], at: usize| -> Option<i16> {
        Some(i16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    };
    let nfmt = rd16(rest, 0)?.max(0) as usize;
    let mut at = 2 + nfmt * 2;
    let nparams = rd16(rest, at)?.max(0) as usize;
    at += 2;
    for _ in 0..nparams {
        let l = rest.get(at..at + 4)?;
        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        at += 4 + len.max(0) as usize;
    }
    (at <= rest.len()).then(|| rest.split_at(at))
}

/// A RowDescription with the format codes of a Bind's result-format section (none: text;
/// one: every column; else one per column).
fn with_formats(desc: &[u8], result_formats: &[u8]) -> Bytes {
    let n = i16::from_be_bytes([
        result_formats.first().copied().unwrap_or(0),
        result_formats.get(1).copied().unwrap_or(0),
    ])
    .max(0) as usize;
    let code = |i: usize| -> [u8; 2] {
        let at = 2 + 2 * if n == 1 { 0 } else { i };
        match (n, result_formats.get(at), result_formats.get(at + 1)) {
            (0, _, _) => [0, 0],
            (_, Some(a), Some(b)) => [*a, *b],
            _ => [0, 0],
        }
    };
    let mut out = BytesMut::from(desc);
    let Some(body) = out.get_mut(5..) else {
        return out.freeze();
    };
    let cols = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
    let mut at = 2;
    for i in 0..cols {
        let Some(z) = body[at..].iter().position(|b| *b == 0) else {
            break;
        };
        at += z + 1 + 16;
        if at + 2 > body.len() {
            break;
        }
        body[at..at + 2].copy_from_slice(&code(i));
        at += 2;
    }
    out.freeze()
}

impl Session {
    /// Run `finish` for the client's simple Query `original` on `shards`.
    pub(super) async fn fanout_finish(
        &mut self,
        finish: Arc<Finish>,
        original: &str,
        shards: ShardSet,
        status: u8,
    ) -> Result<(), End> {
        let Some(mut conns) = self.checkout_shards(shards, status).await else {
            return Ok(());
        };
        match self
            .try_stream(&finish, original.as_bytes(), &[0, 0], &mut conns)
            .await
        {
            Err(msg) => {
                self.client_error("0A000", &msg);
                return self.end_merged(conns, status);
            }
            Ok(Some(Prep::Failed(e))) => {
                self.cout.extend_from_slice(&e);
                return self.end_merged(conns, status);
            }
            Ok(Some(Prep::Ready(p))) => {
                if let Some(st) = &finish.stream {
                    let d = p.described.clone();
                    let bind = Binding {
                        param_types: &[0, 0],
                        params: &[0, 0, 0, 0],
                        formats: &[0, 0],
                    };
                    self.stream_run(st, &p, bind, &mut conns, Some(&d)).await;
                }
                return self.end_merged(conns, status);
            }
            Ok(Some(Prep::Fallback)) | Ok(None) => {}
        }
        match self
            .run_partials(
                &finish,
                original.as_bytes(),
                &[0, 0],
                &[0, 0, 0, 0],
                &mut conns,
            )
            .await
        {
            Err(msg) => self.client_error("0A000", &msg),
            Ok(Partials::Failed(e)) => self.cout.extend_from_slice(&e),
            Ok(Partials::Ready {
                described,
                sql,
                params,
                ..
            }) => {
                if let Some((_, c0)) = conns.first_mut() {
                    self.run_final(c0, &sql, &params, &[0, 0], Some(&described))
                        .await;
                }
            }
        }
        release(conns);
        protocol::ready_for_query(&mut self.cout, status);
        Ok(())
    }

    /// Run `finish` for an extended-protocol batch (`frames`, through its Sync) with one
    /// Bind and one Execute of the statement `original` (parameter types `param_types`).
    pub(super) async fn fanout_finish_extended(
        &mut self,
        finish: Arc<Finish>,
        frames: &[Bytes],
        original: &[u8],
        param_types: &[u8],
        shards: ShardSet,
    ) -> Result<(), End> {
        let status = self.pending.tx().byte();
        let binds: Vec<&Bytes> = frames.iter().filter(|f| f[0] == b'B').collect();
        let execs = frames.iter().filter(|f| f[0] == b'E').count();
        let bind = match (binds.as_slice(), execs) {
            ([b], 1) => protocol::parse_bind(b)?,
            _ => {
                self.client_error("0A000", "a read whose shards' answers must be merged must come alone in its batch (one Bind and one Execute before Sync)");
                protocol::ready_for_query(&mut self.cout, status);
                return Ok(());
            }
        };
        let Some((params, result_formats)) = split_bind_rest(bind.rest) else {
            return Err(End::Fatal("08P01", "malformed Bind message".into()));
        };
        let Some(mut conns) = self.checkout_shards(shards, status).await else {
            return Ok(());
        };
        match self
            .try_stream(&finish, original, param_types, &mut conns)
            .await
        {
            Err(msg) => {
                self.client_error("0A000", &msg);
                return self.end_merged(conns, status);
            }
            Ok(Some(Prep::Failed(e))) => {
                self.cout.extend_from_slice(&e);
                return self.end_merged(conns, status);
            }
            Ok(Some(Prep::Ready(p))) => {
                let Some(st) = finish.stream.as_ref() else {
                    return self.end_merged(conns, status);
                };
                for f in frames {
                    if self.answer_unexecuted(
                        f,
                        &p.described,
                        p.param_desc.as_ref(),
                        result_formats,
                    ) {
                        let bind = Binding {
                            param_types,
                            params,
                            formats: result_formats,
                        };
                        self.stream_run(st, &p, bind, &mut conns, None).await
                    }
                }
                return self.end_merged(conns, status);
            }
            Ok(Some(Prep::Fallback)) | Ok(None) => {}
        }
        match self
            .run_partials(&finish, original, param_types, params, &mut conns)
            .await
        {
            Err(msg) => self.client_error("0A000", &msg),
            Ok(Partials::Failed(e)) => self.cout.extend_from_slice(&e),
            Ok(Partials::Ready {
                described,
                param_desc,
                sql,
                params,
            }) => {
                // Answer each message of the batch in order, as one server would.
                for f in frames {
                    if self.answer_unexecuted(f, &described, param_desc.as_ref(), result_formats) {
                        let Some((_, c0)) = conns.first_mut() else {
                            break;
                        };
                        if !self
                            .run_final(c0, &sql, &params, result_formats, None)
                            .await
                        {
                            break;
                        }
                    }
                }
            }
        }
        release(conns);
        protocol::ready_for_query(&mut self.cout, status);
        Ok(())
    }

    /// Answer one message of a merged read's batch as one server would, except Execute:
    /// true for an Execute (the caller runs the rows there).
    fn answer_unexecuted(
        &mut self,
        f: &[u8],
        described: &Bytes,
        param_desc: Option<&Bytes>,
        result_formats: &[u8],
    ) -> bool {
        match f[0] {
            b'P' => protocol::parse_complete(&mut self.cout),
            b'B' => self.cout.extend_from_slice(&[b'2', 0, 0, 0, 4]),
            b'D' if f.get(5) == Some(&b'S') => {
                if let Some(p) = param_desc {
                    self.cout.extend_from_slice(p);
                }
                self.cout.extend_from_slice(described);
            }
            b'D' => self
                .cout
                .extend_from_slice(&with_formats(described, result_formats)),
            b'E' => return true,
            b'C' => protocol::close_complete(&mut self.cout),
            _ => {}
        }
        false
    }

    /// The streaming merge's preparation, when the plan has one (None: it has not).
    async fn try_stream(
        &mut self,
        finish: &Finish,
        original: &[u8],
        param_types: &[u8],
        conns: &mut [(u32, PooledConn)],
    ) -> Result<Option<Prep>, String> {
        let (Some(st), Some((_, c0))) = (finish.stream.as_ref(), conns.first_mut()) else {
            return Ok(None);
        };
        self.stream_prepare(st, original, param_types, c0)
            .await
            .map(Some)
    }

    fn end_merged(&mut self, conns: Vec<(u32, PooledConn)>, status: u8) -> Result<(), End> {
        release(conns);
        protocol::ready_for_query(&mut self.cout, status);
        Ok(())
    }

    /// Send every shard the partial query (shard 0 first describes the client's query) and
    /// collect the partial rows. Err: refuse with 0A000 and this message.
    async fn run_partials(
        &mut self,
        finish: &Finish,
        original: &[u8],
        param_types: &[u8],
        params: &[u8],
        conns: &mut [(u32, PooledConn)],
    ) -> Result<Partials, String> {
        for (i, (_, c)) in conns.iter_mut().enumerate() {
            let mut out = BytesMut::new();
            if i == 0 {
                protocol::parse_msg(&mut out, b"", original, param_types);
                protocol::target_msg(&mut out, b'D', b'S', b"");
            }
            protocol::parse_msg(&mut out, b"", finish.partial.as_bytes(), param_types);
            // The client's parameters; one result format code: binary for every column.
            let mut rest = BytesMut::from(params);
            rest.put_slice(&[0, 1, 0, 1]);
            protocol::bind_msg(&mut out, b"", b"", &rest);
            protocol::target_msg(&mut out, b'D', b'P', b"");
            execute_msg(&mut out);
            protocol::sync(&mut out);
            if c.stream.write_all(&out).await.is_err() {
                c.broken = true;
            }
        }
        let mut cols: Option<Columns> = None;
        let mut answers = Vec::with_capacity(conns.len());
        let mut too_big = false;
        for (i, (s, c)) in conns.iter_mut().enumerate() {
            let mut a = Answer::default();
            if c.broken {
                a.error = Some(error_frame("08006", &format!("shard {s}: connection lost")));
                answers.push(a);
                continue;
            }
            let mut parses = 0;
            loop {
                let f = match c.read_frame().await {
                    Ok(f) => f,
                    Err(e) => {
                        c.broken = true;
                        a.error.get_or_insert_with(|| {
                            error_frame("08006", &format!("shard {s}: {e}"))
                        });
                        break;
                    }
                };
                match f[0] {
                    b'1' => parses += 1,
                    b't' if i == 0 && parses == 1 => a.param_desc = Some(f),
                    b'T' if i == 0 && parses == 1 && a.described.is_none() => a.described = Some(f),
                    b'T' => a.partial = fields(&f),
                    b'D' if a.error.is_none() && !too_big => {
                        let n = a.partial.as_ref().map_or(0, Vec::len);
                        let cs = cols.get_or_insert_with(|| Columns::new(n));
                        if cs.push(&f).is_err() {
                            a.error = Some(error_frame(
                                "XX000",
                                "shards returned partial results of different shapes",
                            ));
                        } else if cs.bytes > MAX_PARTIAL_BYTES {
                            too_big = true;
                            // Not worth reading on: closing the servers is cheaper.
                            c.broken = true;
                            break;
                        }
                    }
                    b'E' => {
                        a.error.get_or_insert(f);
                    }
                    b'N' | b'A' => self.cout.extend_from_slice(&f),
                    b'Z' => break,
                    _ => {}
                }
            }
            answers.push(a);
            if too_big {
                for (_, c) in conns.iter_mut().skip(i + 1) {
                    c.broken = true;
                }
                break;
            }
        }
        if too_big {
            return Err(format!(
                "the shards' partial results exceed {} MiB, more than pgvane holds to merge \
                 them; add a LIMIT, narrow the WHERE clause, or run it on one shard",
                MAX_PARTIAL_BYTES >> 20
            ));
        }
        if let Some(e) = answers.iter().find_map(|a| a.error.clone()) {
            let code = protocol::parse_error(&e).code;
            crate::metrics::count_error(&self.ctx.database, &code);
            return Ok(Partials::Failed(e));
        }
        let first = answers.first();
        let (Some(described), Some(partial)) = (
            first.and_then(|a| a.described.clone()),
            first.and_then(|a| a.partial.clone()),
        ) else {
            return Err("the shards did not describe the query's result".into());
        };
        let param_desc = first.and_then(|a| a.param_desc.clone());
        let out_fields = fields(&described).ok_or("malformed RowDescription from a shard")?;
        let cols = cols.unwrap_or_else(|| Columns::new(partial.len()));
        let Some((_, c0)) = conns.first_mut() else {
            return Err("no shard".into());
        };
        let oids: Vec<u32> = partial
            .iter()
            .chain(out_fields.iter())
            .map(|f| f.type_oid)
            .collect();
        let names = type_names(c0, &oids).await?;
        let named = |fs: &[Field]| -> Vec<Column> {
            fs.iter()
                .map(|f| Column {
                    name: f.name.clone(),
                    type_name: names
                        .iter()
                        .find(|(o, _)| *o == f.type_oid)
                        .map(|(_, n)| n.clone())
                        .unwrap_or_default(),
                })
                .collect()
        };
        let sql = finish.final_sql(&named(&partial), &named(&out_fields))?;
        tracing::debug!(%sql, rows = cols.rows, "finishing a multi-shard read");
        let elem_oids: Vec<u32> = partial.iter().map(|f| f.type_oid).collect();
        let mut params = BytesMut::new();
        cols.bind_params(&elem_oids, &mut params);
        Ok(Partials::Ready {
            described,
            param_desc,
            sql,
            params,
        })
    }

    /// Run the finishing query on `c0` and stream its rows (in `result_formats`) and tag to
    /// the client; `description`: sent before the first row (simple Query). False when the
    /// client or the server is gone.
    async fn run_final(
        &mut self,
        c0: &mut PooledConn,
        sql: &str,
        params: &[u8],
        result_formats: &[u8],
        mut description: Option<&Bytes>,
    ) -> bool {
        let mut out = BytesMut::new();
        protocol::parse_msg(&mut out, b"", sql.as_bytes(), &[0, 0]);
        let mut rest = BytesMut::from(params);
        rest.put_slice(result_formats);
        protocol::bind_msg(&mut out, b"", b"", &rest);
        execute_msg(&mut out);
        protocol::sync(&mut out);
        if c0.stream.write_all(&out).await.is_err() {
            c0.broken = true;
            self.client_error("08006", "shard connection lost while merging");
            return false;
        }
        loop {
            let f = match c0.read_frame().await {
                Ok(f) => f,
                Err(e) => {
                    c0.broken = true;
                    self.client_error("08006", &format!("shard connection lost: {e}"));
                    return false;
                }
            };
            match f[0] {
                b'D' | b'C' | b'E' => {
                    if let Some(d) = description.take() {
                        self.cout.extend_from_slice(d);
                    }
                    if f[0] == b'E' {
                        let code = protocol::parse_error(&f).code;
                        crate::metrics::count_error(&self.ctx.database, &code);
                    }
                    self.cout.extend_from_slice(&f);
                }
                b'N' | b'A' => self.cout.extend_from_slice(&f),
                b'Z' => return true,
                _ => {}
            }
            if self.cout.len() >= super::CLIENT_FLUSH_AT && self.flush_client().await.is_err() {
                // The client is gone; the server's answer is not read to its end.
                c0.broken = true;
                return false;
            }
        }
    }
}

fn release(conns: Vec<(u32, PooledConn)>) {
    super::account_fanout(conns.iter().map(|(_, c)| c));
    for (_, c) in conns {
        if !c.broken {
            let p = c.pool.clone();
            p.put(c);
        }
    }
}

pub(super) fn error_frame(code: &str, msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    protocol::error_response(&mut b, "ERROR", code, msg);
    b.freeze()
}

/// SQL names of these types: built-ins from the table, others asked of the server.
async fn type_names(c: &mut PooledConn, oids: &[u32]) -> Result<Vec<(u32, String)>, String> {
    let mut names: Vec<(u32, String)> = Vec::new();
    let mut unknown: Vec<u32> = Vec::new();
    for &o in oids {
        if names.iter().any(|(x, _)| *x == o) || unknown.contains(&o) {
            continue;
        }
        match builtin_type(o) {
            Some(n) => names.push((o, n.to_string())),
            None => unknown.push(o),
        }
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(|o| o.to_string()).collect();
        let sql = format!(
            "SELECT oid::text, pg_catalog.format_type(oid, NULL) FROM pg_catalog.pg_type \
             WHERE oid IN ({})",
            list.join(",")
        );
        let (rows, err) = c
            .query_pairs(&sql)
            .await
            .map_err(|e| format!("looking up result types: {e}"))?;
        if let Some(e) = err {
            return Err(format!("looking up result types: {}", e.message));
        }
        for (o, n) in rows {
            if let (Ok(o), Some(n)) = (o.parse::<u32>(), n) {
                names.push((o, n));
            }
        }
    }
    Ok(names)
}
