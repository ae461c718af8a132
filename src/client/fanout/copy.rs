//! `COPY ... FROM STDIN` on a sharded database: one COPY per shard inside BEGIN, the
//! client's rows split by sharding key (every row to every shard for a table that is not
//! sharded), committed on every shard only if all of them succeeded.
//!
//! Owns: the COPY IN conversation with the client (one CopyInResponse, CopyData in any
//! chunking, CopyDone / CopyFail, Flush and Sync ignored as PostgreSQL does) and with the
//! shards, noticing a shard's error while data still flows, and leaving every shard idle
//! (rolled back) or closed: never pooled in COPY state. A client that disconnects mid-COPY
//! closes the shard connections, which rolls them back.
//!
//! Must not: hold more than one incomplete row plus one 64 KiB buffer per shard; parse
//! rows itself (that is [`super::copy_format`]).

use bytes::{Bytes, BytesMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::copy_format::{self, CopyError, CopyKind, Row, RowSplitter};
use crate::client::session::{End, Session};
use crate::database::TableName;
use crate::pool::PooledConn;
use crate::protocol;
use crate::sharding::hash::{partition_for, KeyType};
use crate::sharding::key::ShardedTable;
use crate::sharding::plan::ShardSet;

/// Rows for a shard are sent once this many bytes are buffered.
const SHARD_CHUNK: usize = 64 * 1024;

/// Is this simple-query text a COPY pgvane must handle itself? Parsed from the raw text
/// (options are literals, which normalization would replace).
pub fn classify_sql(sql: &str, tables: &[ShardedTable]) -> Option<Result<CopyKind, CopyError>> {
    let head = crate::params::skip_ws_comments(sql);
    if !head
        .get(..4)
        .is_some_and(|h| h.eq_ignore_ascii_case("copy"))
        && !sql.contains(';')
    {
        return None;
    }
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let copies = stmts
        .iter()
        .filter(|s| matches!(s, sqlparser::ast::Statement::Copy { .. }))
        .count();
    match (copies, stmts.len()) {
        (0, _) => None,
        (1, 1) => copy_format::classify(&stmts[0], tables),
        _ => Some(Err(CopyError {
            code: "0A000",
            message:
                "COPY on a sharded database must be sent on its own, not in a multi-statement query"
                    .into(),
            context: None,
        })),
    }
}

/// An ErrorResponse for a COPY error, with its CONTEXT line.
pub fn error_frame(e: &CopyError) -> BytesMut {
    let mut body = BytesMut::new();
    for (k, v) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', e.code),
        (b'M', e.message.as_str()),
    ]
    .into_iter()
    .chain(e.context.as_deref().map(|c| (b'W', c)))
    {
        body.extend_from_slice(&[k]);
        body.extend_from_slice(v.as_bytes());
        body.extend_from_slice(&[0]);
    }
    body.extend_from_slice(&[0]);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.extend_from_slice(b"E");
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn copy_fail(out: &mut BytesMut, why: &str) {
    out.extend_from_slice(b"f");
    out.extend_from_slice(&((why.len() + 5) as u32).to_be_bytes());
    out.extend_from_slice(why.as_bytes());
    out.extend_from_slice(&[0]);
}

fn copy_data(out: &mut BytesMut, payload: &[u8]) {
    out.extend_from_slice(b"d");
    out.extend_from_slice(&((payload.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// One shard's side of the COPY.
struct Shard {
    conn: PooledConn,
    /// Still in COPY IN mode (no error, no CopyDone/CopyFail yet).
    in_copy: bool,
    /// Rows waiting to be sent.
    buf: BytesMut,
    /// The shard's error, if it reported one.
    error: Option<Bytes>,
    /// Rows the shard reported ("COPY n").
    rows: u64,
}

impl Shard {
    async fn send(&mut self, bytes: &[u8]) -> bool {
        if self.conn.stream.write_all(bytes).await.is_err() {
            self.conn.broken = true;
            self.in_copy = false;
            return false;
        }
        true
    }

    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() || !self.in_copy {
            self.buf.clear();
            return true;
        }
        let mut f = BytesMut::with_capacity(self.buf.len() + 5);
        copy_data(&mut f, &self.buf);
        self.buf.clear();
        self.send(&f).await
    }

    /// Read through ReadyForQuery, keeping the first error and the row count.
    async fn finish(&mut self) {
        loop {
            match self.conn.read_frame().await {
                Ok(f) => match f[0] {
                    b'E' if self.error.is_none() => self.error = Some(f),
                    b'C' => {
                        let tag = String::from_utf8_lossy(protocol::command_tag(&f)).into_owned();
                        self.rows = tag
                            .strip_prefix("COPY ")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                    }
                    b'Z' => break,
                    _ => {}
                },
                Err(_) => {
                    self.conn.broken = true;
                    break;
                }
            }
        }
        self.in_copy = false;
    }

    /// Without waiting: did the shard report an error while we send rows?
    async fn check(&mut self) {
        if !self.in_copy {
            return;
        }
        let c: &mut crate::server::ServerConn = &mut self.conn;
        c.rbuf.reserve(1024);
        match c.stream.try_read_buf(&mut c.rbuf) {
            Ok(0) => {
                c.broken = true;
                self.in_copy = false;
                return;
            }
            Ok(_) => {}
            Err(_) => return, // WouldBlock: nothing to say
        }
        loop {
            match protocol::split_frame(&mut c.rbuf, crate::server::MAX_SERVER_MESSAGE) {
                Ok(Some(f)) if f[0] == b'E' => {
                    self.error = Some(f);
                    self.finish().await;
                    return;
                }
                Ok(Some(_)) => {} // a notice
                Ok(None) => return,
                Err(_) => {
                    c.broken = true;
                    self.in_copy = false;
                    return;
                }
            }
        }
    }

    async fn end(&mut self, commit: bool) {
        if self.conn.broken {
            return;
        }
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        match self.conn.run_internal(sql).await {
            Ok(None) => {}
            Ok(Some(e)) => {
                if self.error.is_none() {
                    let mut f = BytesMut::new();
                    protocol::error_response(&mut f, "ERROR", &e.code, &e.message);
                    self.error = Some(f.freeze());
                }
                self.conn.broken = true;
            }
            Err(_) => self.conn.broken = true,
        }
    }
}

impl Session {
    /// Run `COPY ... FROM STDIN` (`sql`, the client's statement) on every shard.
    pub(super) async fn copy_in(
        &mut self,
        sql: &str,
        kind: CopyKind,
        shards: ShardSet,
        status: u8,
    ) -> Result<(), End> {
        let CopyKind::FromStdin {
            table,
            columns,
            options,
            table_name,
        } = kind
        else {
            return Ok(());
        };
        let db = self.ctx.db.clone();
        let n = db.shards.len() as u32;
        // Where the key is in each row.
        let mut plan: Result<Option<(usize, &ShardedTable)>, CopyError> = Ok(None);
        if let Some(t) = table.and_then(|t| db.sharded_tables.get(t)) {
            let cols = if columns.is_empty() {
                db.columns_of(&t.qualified()).await
            } else {
                Some(columns.clone())
            };
            plan = match cols.and_then(|c| c.iter().position(|x| x.eq_ignore_ascii_case(&t.column)))
            {
                Some(i) => Ok(Some((i, t))),
                None => Err(CopyError {
                    code: "0A000",
                    message: format!(
                        "pgvane cannot find the sharding key column \"{}\" of {} to split the COPY",
                        t.column, table_name
                    ),
                    context: None,
                }),
            };
        }
        let shards = if table.is_some() {
            ShardSet::all(n)
        } else {
            shards
        };
        let Some(conns) = self.checkout_shards(shards, status).await else {
            return Ok(());
        };
        // BEGIN and the COPY on every shard.
        let mut start = BytesMut::new();
        protocol::query(&mut start, "BEGIN");
        protocol::query(&mut start, sql);
        let mut sh: Vec<Shard> = Vec::with_capacity(conns.len());
        let mut index = vec![usize::MAX; n as usize];
        for (s, conn) in conns {
            if let Some(slot) = index.get_mut(s as usize) {
                *slot = sh.len();
            }
            sh.push(Shard {
                conn,
                in_copy: false,
                buf: BytesMut::new(),
                error: None,
                rows: 0,
            });
        }
        let mut copy_in_response = None;
        for s in sh.iter_mut() {
            if !s.send(&start).await {
                continue;
            }
            // BEGIN's answer, then CopyInResponse or the COPY's error.
            let mut zs = 0;
            loop {
                match s.conn.read_frame().await {
                    Ok(f) => match f[0] {
                        b'G' => {
                            s.in_copy = true;
                            copy_in_response.get_or_insert(f);
                            break;
                        }
                        b'E' => {
                            s.error.get_or_insert(f);
                        }
                        b'Z' => {
                            zs += 1;
                            if zs == 2 {
                                break;
                            }
                        }
                        _ => {}
                    },
                    Err(_) => {
                        s.conn.broken = true;
                        break;
                    }
                }
            }
        }
        let failed = sh.iter().any(|s| s.error.is_some() || s.conn.broken);
        let refusal = match (&plan, failed) {
            (Err(e), false) => Some(error_frame(e).freeze()),
            _ => None,
        };
        let Some(g) = copy_in_response.filter(|_| !failed && refusal.is_none()) else {
            return self.copy_abort(sh, refusal, status).await;
        };
        self.cout.extend_from_slice(&g);
        self.flush_client().await?;
        let mut splitter = plan.ok().flatten().map(|(i, t)| {
            let sp = RowSplitter::new(
                options.clone(),
                i,
                &t.column,
                t.key_type,
                &table_name,
                self.max_message,
            );
            (sp, t.key_type)
        });
        loop {
            let frame = match protocol::split_frame(&mut self.cin, self.max_message)? {
                Some(f) => f,
                None => {
                    self.cin.reserve(64 * 1024);
                    match self.client.read_buf(&mut self.cin).await {
                        Ok(0) | Err(_) => return Err(End::ClientGone), // shards close: rollback
                        Ok(_) => continue,
                    }
                }
            };
            match frame[0] {
                b'd' => {
                    let data = &frame[5..];
                    let routed = match &mut splitter {
                        Some((sp, kt)) => route_rows(sp, *kt, n, &index, &mut sh, data, false),
                        None => {
                            for s in sh.iter_mut() {
                                s.buf.extend_from_slice(data);
                            }
                            Ok(())
                        }
                    };
                    if let Err(e) = routed {
                        return self
                            .copy_abort(sh, Some(error_frame(&e).freeze()), status)
                            .await;
                    }
                    for s in sh.iter_mut() {
                        if s.buf.len() >= SHARD_CHUNK {
                            s.flush().await;
                        }
                        s.check().await;
                    }
                    if sh.iter().any(|s| s.error.is_some() || s.conn.broken) {
                        return self.copy_abort(sh, None, status).await;
                    }
                }
                b'c' => {
                    if let Some((sp, kt)) = &mut splitter {
                        if let Err(e) = route_rows(sp, *kt, n, &index, &mut sh, &[], true) {
                            return self
                                .copy_abort(sh, Some(error_frame(&e).freeze()), status)
                                .await;
                        }
                    }
                    return self.copy_done(sh, table.is_some(), status).await;
                }
                b'f' => {
                    let why = frame.get(5..frame.len().saturating_sub(1)).unwrap_or(&[]);
                    let why = String::from_utf8_lossy(why).into_owned();
                    let mut fail = BytesMut::new();
                    copy_fail(&mut fail, &why);
                    for s in sh.iter_mut().filter(|s| s.in_copy) {
                        if s.send(&fail).await {
                            s.finish().await;
                        }
                    }
                    return self.copy_abort(sh, None, status).await;
                }
                b'H' | b'S' => {}
                b'X' => return Err(End::ClientGone),
                other => {
                    // PostgreSQL reports it, then ends the connection (FATAL): so does pgvane.
                    let e = CopyError {
                        code: "08P01",
                        message: format!(
                            "unexpected message type 0x{other:02X} during COPY from stdin"
                        ),
                        context: None,
                    };
                    self.abort_shards(sh, Some(error_frame(&e).freeze())).await;
                    return Err(End::Fatal("08P01", super::super::LOST_SYNC.into()));
                }
            }
        }
    }

    /// CopyDone: finish the COPY on every shard; commit everywhere only if all succeeded.
    async fn copy_done(&mut self, mut sh: Vec<Shard>, split: bool, status: u8) -> Result<(), End> {
        let done = [b'c', 0, 0, 0, 4];
        for s in sh.iter_mut() {
            if s.flush().await && s.in_copy && s.send(&done).await {
                s.finish().await;
            }
        }
        if sh.iter().any(|s| s.error.is_some() || s.conn.broken) {
            return self.copy_abort(sh, None, status).await;
        }
        let mut ok = true;
        for s in sh.iter_mut() {
            s.end(ok).await;
            ok &= s.error.is_none() && !s.conn.broken;
        }
        let total: u64 = if split {
            sh.iter().map(|s| s.rows).sum()
        } else {
            sh.iter().map(|s| s.rows).max().unwrap_or(0)
        };
        if ok {
            protocol::command_complete(&mut self.cout, &format!("COPY {total}"));
            self.tx_wrote = true;
        } else {
            let err = sh.iter().find_map(|s| s.error.clone());
            self.forward_copy_error(err);
        }
        release(sh);
        protocol::ready_for_query(&mut self.cout, status);
        Ok(())
    }

    /// Give up: end the COPY on every shard still in it, roll back everywhere, forward
    /// `error` (or the first shard's error).
    async fn copy_abort(
        &mut self,
        sh: Vec<Shard>,
        error: Option<Bytes>,
        status: u8,
    ) -> Result<(), End> {
        self.abort_shards(sh, error).await;
        protocol::ready_for_query(&mut self.cout, status);
        Ok(())
    }

    /// End the COPY on every shard (rolled back) and queue the error for the client.
    async fn abort_shards(&mut self, mut sh: Vec<Shard>, error: Option<Bytes>) {
        // The error that made us give up comes first; the shards' answers to our CopyFail
        // are not the client's business.
        let shard_error = sh.iter().find_map(|s| s.error.clone());
        let mut fail = BytesMut::new();
        copy_fail(&mut fail, "COPY aborted by pgvane");
        for s in sh.iter_mut().filter(|s| s.in_copy) {
            if s.send(&fail).await {
                s.finish().await;
            }
        }
        for s in sh.iter_mut() {
            s.end(false).await;
        }
        self.forward_copy_error(error.or(shard_error));
        release(sh);
    }

    fn forward_copy_error(&mut self, err: Option<Bytes>) {
        match err {
            Some(e) => {
                let code = protocol::parse_error(&e).code;
                crate::metrics::count_error(&self.ctx.database, &code);
                self.cout.extend_from_slice(&e);
            }
            None => self.client_error("08006", "a shard connection failed during COPY"),
        }
    }
}

/// Split `data` into rows and queue each for its shard (headers for every shard).
fn route_rows(
    sp: &mut RowSplitter,
    kt: KeyType,
    n: u32,
    index: &[usize],
    sh: &mut [Shard],
    data: &[u8],
    last: bool,
) -> Result<(), CopyError> {
    sp.feed(data, last, &mut |row| {
        match row {
            Row::Header(h) => {
                for s in sh.iter_mut() {
                    s.buf.extend_from_slice(h);
                }
            }
            Row::Data(line, key) => {
                let shard = partition_for(&key.as_key(), kt, n) as usize;
                if let Some(s) = index.get(shard).and_then(|&i| sh.get_mut(i)) {
                    s.buf.extend_from_slice(line);
                }
            }
        }
        Ok(())
    })
}

/// Idle shards back to the pool; the others are closed (which rolls them back).
fn release(sh: Vec<Shard>) {
    super::account_fanout(sh.iter().map(|s| &s.conn));
    for s in sh {
        if !s.conn.broken && !s.in_copy {
            let p = s.conn.pool.clone();
            p.put(s.conn);
        }
    }
}
