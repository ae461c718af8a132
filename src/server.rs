//! A connection from pgvane to one PostgreSQL backend.
//!
//! Owns: connecting, the startup and authentication exchange as a client (SCRAM-SHA-256, md5,
//! cleartext, trust), the server's read buffer, what the server has been told (session
//! settings, prepared statements under pgvane's names) and small control exchanges (reset
//! query, health check, settings sync) whose answers never reach a client.
//!
//! Must not: decide which server a statement goes to, or hold a client's state. The session
//! (`client`) drives the connection; the `pool` keeps idle ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{md5_client_response, ScramClient};
use crate::client::prepared::StmtDef;
use crate::params::Params;
use crate::protocol::{self, ErrorFields};

/// Largest message accepted from a server (DataRow can be up to 1 GB in PostgreSQL).
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Why a server connection could not be used.
#[derive(Debug)]
pub enum ServerError {
    Io(std::io::Error),
    Timeout,
    Protocol(String),
    /// The server answered with an ErrorResponse (e.g. during login).
    Server(ErrorFields),
    Auth(String),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Io(e) => write!(f, "{e}"),
            ServerError::Timeout => f.write_str("timed out"),
            ServerError::Protocol(m) => write!(f, "protocol error: {m}"),
            ServerError::Server(e) => write!(f, "{} {}: {}", e.severity, e.code, e.message),
            ServerError::Auth(m) => write!(f, "authentication failed: {m}"),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        ServerError::Io(e)
    }
}

impl From<protocol::ProtocolError> for ServerError {
    fn from(e: protocol::ProtocolError) -> Self {
        ServerError::Protocol(e.0)
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub connect_timeout: Duration,
    /// Extra startup parameters (e.g. application_name for pgvane's own connections).
    pub startup: Vec<(String, String)>,
}

/// Prepared statements a server knows under pgvane's names, with LRU eviction. The cache holds
/// each statement (keeping it in the shared registry) until it is evicted, the server forgets
/// it (DISCARD ALL) or the connection is dropped.
#[derive(Debug, Default)]
pub struct PreparedCache {
    entries: HashMap<u64, (Arc<StmtDef>, u64)>,
    /// The result shape ([`protocol::row_shape`]) of a statement here, once described.
    shapes: HashMap<u64, u64>,
    tick: u64,
    /// Lookups since the counters were last taken (plain fields: no shared atomics per Bind).
    hits: u64,
    misses: u64,
}

impl PreparedCache {
    /// True if prepared; marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        let hit = match self.entries.get_mut(&id) {
            Some((_, t)) => {
                *t = self.tick;
                true
            }
            None => false,
        };
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        hit
    }

    /// Record `def` as prepared; returns the least recently used statement to close if over
    /// `max` (0: no limit).
    pub fn insert(&mut self, def: &Arc<StmtDef>, max: usize) -> Option<Arc<StmtDef>> {
        self.tick += 1;
        self.entries.insert(def.id, (def.clone(), self.tick));
        self.shapes.remove(&def.id);
        if max > 0 && self.entries.len() > max {
            let victim = self
                .entries
                .iter()
                .filter(|(k, _)| **k != def.id)
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k);
            if let Some(v) = victim {
                crate::metrics::count_prepared_eviction();
                self.shapes.remove(&v);
                return self.entries.remove(&v).map(|(d, _)| d);
            }
        }
        None
    }

    pub fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
        self.shapes.remove(&id);
    }

    /// The statement's result shape here, if a Describe of it was seen.
    pub fn shape(&self, id: u64) -> Option<u64> {
        self.shapes.get(&id).copied()
    }

    pub fn set_shape(&mut self, id: u64, shape: u64) {
        if self.entries.contains_key(&id) {
            self.shapes.insert(id, shape);
        }
    }

    /// (hits, misses) since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.hits),
            std::mem::take(&mut self.misses),
        )
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.shapes.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The name pgvane gives a shared prepared statement on servers.
pub fn statement_name(id: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"pgvane_");
    out.extend_from_slice(id.to_string().as_bytes());
}

/// An authenticated, idle-at-start connection to a backend.
pub struct ServerConn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub id: u64,
    pub addr: String,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values the server reported at login.
    pub reported: Vec<(String, String)>,
    /// Session settings applied on top of the login defaults.
    pub params: Params,
    pub prepared: PreparedCache,
    pub created: Instant,
    pub last_used: Instant,
    /// Set when the connection is in an unknown state and must not be reused.
    pub broken: bool,
    /// The pool generation it was opened in (RECONNECT retires older ones).
    pub generation: u64,
    /// Times a client checked it out (a client's sequence state survives only if nobody
    /// else had it in between).
    pub checkouts: u64,
    /// The client (id) whose sequence state it holds, 0 if none: others take it last.
    pub seq_owner: u64,
    /// The last message types exchanged, for the log when the connection goes out of step.
    pub trace: Trace,
    /// NotificationResponses that arrived while pgvane ran a query of its own: they belong
    /// to the client (its LISTEN) and are delivered after that query.
    pub notifications: Vec<Bytes>,
    /// With `server_close_on_library_load`: how many settings loaded libraries defined when
    /// the connection opened (see [`ServerConn::library_settings`]).
    pub libraries_at_open: Option<u64>,
}

/// A small ring of the last message types sent ('>' before the type) and received.
#[derive(Debug, Clone)]
pub struct Trace {
    ring: [u8; 128],
    at: usize,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            ring: [b' '; 128],
            at: 0,
        }
    }
}

impl Trace {
    fn push(&mut self, b: u8) {
        self.ring[self.at % self.ring.len()] = b;
        self.at += 1;
    }

    /// Record the frames in `buf` as sent.
    pub fn sent(&mut self, mut buf: &[u8]) {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            self.push(b'>');
            self.push(buf[0]);
            buf = buf.get(len + 1..).unwrap_or(&[]);
        }
    }

    pub fn received(&mut self, tag: u8) {
        self.push(tag);
    }

    /// Oldest first, as text.
    pub fn text(&self) -> String {
        let n = self.ring.len();
        let start = if self.at > n { self.at % n } else { 0 };
        let len = self.at.min(n);
        (0..len)
            .map(|i| self.ring[(start + i) % n] as char)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect()
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl ServerConn {
    /// Connect, authenticate and wait for the first ReadyForQuery.
    pub async fn connect(p: &ConnectParams) -> Result<ServerConn, ServerError> {
        match tokio::time::timeout(p.connect_timeout, Self::connect_inner(p)).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::Timeout),
        }
    }

    async fn connect_inner(p: &ConnectParams) -> Result<ServerConn, ServerError> {
        let addr = format!("{}:{}", p.host, p.port);
        let stream = TcpStream::connect(&addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            checkouts: 0,
            seq_owner: 0,
            libraries_at_open: None,
            addr,
            pid: 0,
            secret: 0,
            reported: Vec::new(),
            params: Params::default(),
            prepared: PreparedCache::default(),
            created: Instant::now(),
            last_used: Instant::now(),
            broken: false,
            generation: 0,
            trace: Trace::default(),
            notifications: Vec::new(),
        };
        let mut out = BytesMut::new();
        let mut sp: Vec<(&str, &str)> = vec![("user", &p.user), ("database", &p.dbname)];
        for (k, v) in &p.startup {
            sp.push((k, v));
        }
        protocol::startup_message(&mut out, &sp);
        conn.stream.write_all(&out).await?;
        let mut scram: Option<ScramClient> = None;
        loop {
            let frame = conn.read_frame().await?;
            match frame[0] {
                b'R' => {
                    let (code, data) = protocol::parse_auth_request(&frame)?;
                    out.clear();
                    match code {
                        0 => continue,
                        3 => {
                            let pw = p.password.as_deref().ok_or_else(|| {
                                ServerError::Auth(
                                    "server asked for a password; none configured".into(),
                                )
                            })?;
                            protocol::password_message(&mut out, pw.as_bytes());
                        }
                        5 => {
                            let pw = p.password.as_deref().ok_or_else(|| {
                                ServerError::Auth(
                                    "server asked for md5; no password configured".into(),
                                )
                            })?;
                            if data.len() < 4 {
                                return Err(ServerError::Protocol("short md5 salt".into()));
                            }
                            let salt = [data[0], data[1], data[2], data[3]];
                            let resp = md5_client_response(&p.user, pw, salt);
                            protocol::password_message(&mut out, resp.as_bytes());
                        }
                        10 => {
                            let pw = p.password.as_deref().ok_or_else(|| {
                                ServerError::Auth(
                                    "server asked for SCRAM; no password configured".into(),
                                )
                            })?;
                            if pw.starts_with("SCRAM-SHA-256$") || is_md5_hash(pw) {
                                return Err(ServerError::Auth(
                                    "server asked for SCRAM but only a hashed password is configured; set server_password".into(),
                                ));
                            }
                            let c = ScramClient::new(pw);
                            protocol::sasl_initial_response(
                                &mut out,
                                "SCRAM-SHA-256",
                                &c.client_first(),
                            );
                            scram = Some(c);
                        }
                        11 => {
                            let c = scram.as_mut().ok_or_else(|| {
                                ServerError::Protocol("unexpected SASL continue".into())
                            })?;
                            let msg = c
                                .handle_server_first(data)
                                .map_err(|e| ServerError::Auth(e.to_string()))?;
                            protocol::sasl_response(&mut out, &msg);
                        }
                        12 => {
                            let c = scram.as_mut().ok_or_else(|| {
                                ServerError::Protocol("unexpected SASL final".into())
                            })?;
                            c.handle_server_final(data)
                                .map_err(|e| ServerError::Auth(e.to_string()))?;
                            continue;
                        }
                        other => {
                            return Err(ServerError::Auth(format!(
                                "unsupported authentication method {other} requested by server"
                            )))
                        }
                    }
                    conn.stream.write_all(&out).await?;
                }
                b'E' => return Err(ServerError::Server(protocol::parse_error(&frame))),
                b'S' => {
                    let kv = protocol::parse_parameter_status(&frame)?;
                    conn.reported.push(kv);
                }
                b'K' => {
                    let (pid, secret) = protocol::parse_backend_key(&frame)?;
                    conn.pid = pid;
                    conn.secret = secret;
                }
                b'Z' => return Ok(conn),
                _ => {} // NoticeResponse, NegotiateProtocolVersion: nothing to do
            }
        }
    }

    /// Read one whole frame (waiting for bytes as needed).
    pub async fn read_frame(&mut self) -> Result<Bytes, ServerError> {
        loop {
            if let Some(f) = protocol::split_frame(&mut self.rbuf, MAX_SERVER_MESSAGE)? {
                return Ok(f);
            }
            protocol::read_room(&mut self.rbuf, 4096, 32 * 1024);
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(ServerError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
        }
    }

    /// Run a simple query whose results nobody sees; returns the first error, if any.
    /// The connection is left idle, or marked broken when the server is not idle after it.
    pub async fn run_internal(&mut self, sql: &str) -> Result<Option<ErrorFields>, ServerError> {
        let mut out = BytesMut::new();
        protocol::query(&mut out, sql);
        self.trace.push(b'#');
        self.trace.sent(&out);
        self.stream.write_all(&out).await?;
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            self.trace.received(f[0]);
            match f[0] {
                b'E' if err.is_none() => err = Some(protocol::parse_error(&f)),
                b'C' => self.note_command_complete(&f),
                b'Z' => {
                    if f.len() < 6 || f[5] != b'I' {
                        self.broken = true;
                    }
                    return Ok(err);
                }
                b'A' => self.notifications.push(f),
                _ => {}
            }
        }
    }

    /// Run a simple query pgvane needs the answer of: its rows (first two columns, as text)
    /// and its first error. The connection is left idle, or marked broken.
    pub async fn query_pairs(
        &mut self,
        sql: &str,
    ) -> Result<(Vec<(String, Option<String>)>, Option<ErrorFields>), ServerError> {
        let mut out = BytesMut::new();
        protocol::query(&mut out, sql);
        self.trace.push(b'#');
        self.trace.sent(&out);
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            self.trace.received(f[0]);
            match f[0] {
                b'D' => {
                    let cols = protocol::data_row_texts(&f);
                    let mut it = cols.into_iter();
                    if let (Some(Some(a)), Some(b)) = (it.next(), it.next()) {
                        rows.push((a, b));
                    }
                }
                b'E' if err.is_none() => err = Some(protocol::parse_error(&f)),
                b'Z' => {
                    if f.len() < 6 || f[5] != b'I' {
                        self.broken = true;
                    }
                    return Ok((rows, err));
                }
                b'A' => self.notifications.push(f),
                _ => {}
            }
        }
    }

    /// How many settings of loaded libraries the backend knows. `pg_settings` lists a
    /// library's settings once it is loaded (PL/pgSQL's on first use), never placeholders
    /// that a SET of an unknown `prefix.name` creates, so a rise means a client loaded one.
    pub async fn library_settings(&mut self) -> Result<Option<u64>, ServerError> {
        let (rows, err) = self
            .query_pairs(
                "SELECT 'n', count(*)::text FROM pg_catalog.pg_settings WHERE name LIKE '%.%'",
            )
            .await?;
        if err.is_some() {
            return Ok(None);
        }
        Ok(rows
            .first()
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| v.parse().ok()))
    }

    /// The user this connection logged in as (its first `session_authorization`).
    pub fn login_user(&self) -> &str {
        self.reported
            .iter()
            .find(|(k, _)| k == "session_authorization")
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// The server's current WAL position (`pg_current_wal_lsn()`), for read-your-writes.
    pub async fn query_lsn(&mut self) -> Result<Option<u64>, ServerError> {
        let mut out = BytesMut::new();
        // The insert position covers this session's commit record even with
        // synchronous_commit = off (the write position may not yet).
        protocol::query(
            &mut out,
            "SELECT pg_catalog.pg_current_wal_insert_lsn()::text",
        );
        self.stream.write_all(&out).await?;
        let mut lsn = None;
        loop {
            let f = self.read_frame().await?;
            match f[0] {
                b'D' => {
                    // One text column: int16 count, int32 length, bytes.
                    let b = protocol::body(&f);
                    if b.len() > 6 {
                        let text = String::from_utf8_lossy(&b[6..]);
                        lsn = crate::replication::parse_lsn(&text).map(commit_end);
                    }
                }
                b'Z' => {
                    if f.len() < 6 || f[5] != b'I' {
                        self.broken = true;
                    }
                    return Ok(lsn);
                }
                b'A' => self.notifications.push(f),
                _ => {}
            }
        }
    }

    /// Keep the prepared-statement cache honest when a client runs DISCARD/DEALLOCATE ALL.
    pub fn note_command_complete(&mut self, frame: &[u8]) {
        let tag = protocol::command_tag(frame);
        if tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL" {
            self.prepared.clear();
            if tag == b"DISCARD ALL" {
                self.params = Params::default();
            }
        }
    }

    /// Cheap liveness test without a round trip: an idle server has nothing to say, so any
    /// readable byte (an error before closing) or EOF means it is gone. tokio's `try_read`
    /// checks the reactor's read readiness first (cleared by the last short read of the
    /// server's answer), so this makes no system call unless the socket got data or EOF
    /// since: strace counts 0 probes per transaction.
    pub fn looks_alive(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// Send Terminate and close, best effort.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        protocol::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(100), self.stream.write_all(&out)).await;
    }
}

/// An insert position just past a WAL page header means the commit record ended at the end of
/// the previous page: that end is what a replica's replay position reports.
pub fn commit_end(lsn: u64) -> u64 {
    const PAGE: u64 = 8192;
    const SEGMENT: u64 = 16 * 1024 * 1024;
    if lsn % SEGMENT == 40 {
        lsn - 40
    } else if lsn % PAGE == 24 {
        lsn - 24
    } else {
        lsn
    }
}

fn is_md5_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Send a CancelRequest for (pid, secret) to the backend at `addr`.
pub async fn send_cancel(addr: &str, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel connect timed out")
        })??;
    let mut out = BytesMut::new();
    protocol::cancel_request(&mut out, pid, secret);
    s.write_all(&out).await?;
    // PostgreSQL closes the connection once it has read the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recent() {
        let reg = crate::client::prepared::registry();
        let def = |n: &str| reg.intern(Bytes::from(format!("lru test {n}")), Bytes::new());
        let (a, b, c) = (def("a"), def("b"), def("c"));
        let mut cache = PreparedCache::default();
        assert!(cache.insert(&a, 2).is_none());
        assert!(cache.insert(&b, 2).is_none());
        assert!(cache.touch(a.id));
        assert_eq!(cache.insert(&c, 2).map(|v| v.id), Some(b.id));
        assert!(cache.touch(a.id));
        assert!(!cache.touch(b.id));
        assert!(cache.touch(c.id));
    }

    #[test]
    fn a_closed_connection_releases_its_statements() {
        let reg = crate::client::prepared::registry();
        let text = Bytes::from_static(b"select 'held only by a server'");
        let mut cache = PreparedCache::default();
        cache.insert(&reg.intern(text.clone(), Bytes::new()), 10);
        assert!(
            reg.get(&text, &Bytes::new()).is_some(),
            "the server holds it"
        );
        drop(cache);
        assert!(reg.get(&text, &Bytes::new()).is_none());
        let mut cache = PreparedCache::default();
        cache.insert(&reg.intern(text.clone(), Bytes::new()), 10);
        cache.clear();
        assert!(
            reg.get(&text, &Bytes::new()).is_none(),
            "DISCARD ALL releases too"
        );
    }

    #[test]
    fn names() {
        let mut v = Vec::new();
        statement_name(42, &mut v);
        assert_eq!(v, b"pgvane_42");
    }
}
