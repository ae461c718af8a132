//! Raw wire-protocol client for the network fuzz test.
//!
//! Owns: a loopback TCP connection to pgvane where every read and write has a deadline (so
//! the test never hangs whatever pgvane does), backend framing, a real SCRAM-SHA-256 login
//! (through `postgres-protocol`, as tokio-postgres does it) with hooks to mutate its
//! messages, and builders for frontend messages, malformed ones included.
//!
//! Must not: decide what a case sends or judge results; that is `attack.rs`.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend as fe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    Timeout,
    Closed,
}

/// One backend message: tag and body.
pub struct Frame {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Frame {
    /// First DataRow column as text (for marker checks).
    pub fn first_column(&self) -> Option<String> {
        let b = &self.body;
        let len = i32::from_be_bytes(b.get(2..6)?.try_into().ok()?);
        let v = b.get(6..6 + usize::try_from(len).ok()?)?;
        Some(String::from_utf8_lossy(v).into_owned())
    }

    /// SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> String {
        let mut frame = vec![self.tag, 0, 0, 0, 0];
        frame.extend_from_slice(&self.body);
        pgvane::protocol::parse_error(&frame).code
    }
}

pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// When `Some`, every write is recorded here (the solo bisecting test prints them).
pub static TRACE: std::sync::Mutex<Option<Vec<Vec<u8>>>> = std::sync::Mutex::new(None);

impl Raw {
    pub async fn connect(port: u16) -> std::io::Result<Raw> {
        let s = timeout(IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| std::io::Error::other("connect timeout"))??;
        let _ = s.set_nodelay(true);
        Ok(Raw {
            s,
            buf: BytesMut::with_capacity(8192),
        })
    }

    /// Writes all of `b`; a peer that stops reading makes this time out, not hang.
    pub async fn send(&mut self, b: &[u8]) -> bool {
        if let Some(t) = TRACE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            t.push(b.to_vec());
        }
        matches!(timeout(IO_TIMEOUT, self.s.write_all(b)).await, Ok(Ok(())))
    }

    /// Next backend frame, waiting at most `t`.
    pub async fn frame(&mut self, t: Duration) -> Result<Frame, ReadEnd> {
        let deadline = Instant::now() + t;
        loop {
            match pgvane::protocol::split_frame(&mut self.buf, 64 << 20) {
                Ok(Some(f)) => {
                    return Ok(Frame {
                        tag: f[0],
                        body: f[5..].to_vec(),
                    })
                }
                Ok(None) => {}
                Err(_) => return Err(ReadEnd::Closed), // garbage from pgvane: treat as gone
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Timeout);
            }
            match timeout(left, self.s.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ReadEnd::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadEnd::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Raw bytes until `t` passes or the peer closes (for replies that may not be frames,
    /// e.g. the 'N' answer to SSLRequest).
    pub async fn drain(&mut self, t: Duration) -> ReadEnd {
        let deadline = Instant::now() + t;
        loop {
            self.buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.s.read_buf(&mut self.buf)).await {
                Err(_) => return ReadEnd::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return ReadEnd::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads until a frame with `tag` arrives; returns the frames read, or how it ended.
    pub async fn until(&mut self, tag: u8, t: Duration) -> Result<Vec<Frame>, ReadEnd> {
        let deadline = Instant::now() + t;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.frame(left).await?;
            let done = f.tag == tag;
            seen.push(f);
            if done {
                return Ok(seen);
            }
        }
    }
}

/// Hooks to corrupt a SCRAM login: each gets the real message and returns what to send.
pub type Mutator<'a> = &'a mut (dyn FnMut(Vec<u8>) -> Vec<u8> + Send);

#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Ok,
    Refused(String),
    Ended(ReadEnd),
}

/// Startup + SCRAM-SHA-256 login; `first`/`last` may rewrite the SASLInitialResponse and
/// SASLResponse frames. Waits for the first ReadyForQuery, at most `wait` per message.
pub async fn login(
    c: &mut Raw,
    user: &str,
    password: &str,
    db: &str,
    wait: Duration,
    first: Mutator<'_>,
    last: Mutator<'_>,
) -> Login {
    let mut out = BytesMut::new();
    let params = [
        ("user", user),
        ("database", db),
        ("application_name", "netfuzz"),
    ];
    fe::startup_message(params, &mut out).expect("startup message");
    if !c.send(&out).await {
        return Login::Ended(ReadEnd::Timeout);
    }
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    loop {
        let f = match c.frame(wait).await {
            Ok(f) => f,
            Err(e) => return Login::Ended(e),
        };
        let msg = match (
            f.tag,
            f.body
                .get(..4)
                .map(|c| c.try_into().map(i32::from_be_bytes)),
        ) {
            (b'E', _) => return Login::Refused(f.sqlstate()),
            (b'Z', _) => return Login::Ok,
            (b'R', Some(Ok(10))) => {
                let mut b = BytesMut::new();
                fe::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut b)
                    .expect("sasl initial");
                first(b.to_vec())
            }
            (b'R', Some(Ok(11))) => {
                if scram.update(&f.body[4..]).is_err() {
                    return Login::Refused("client: bad server-first".into());
                }
                let mut b = BytesMut::new();
                fe::sasl_response(scram.message(), &mut b).expect("sasl response");
                last(b.to_vec())
            }
            (b'R', Some(Ok(12))) => {
                if scram.finish(&f.body[4..]).is_err() {
                    return Login::Refused("client: bad server signature".into());
                }
                continue;
            }
            _ => continue, // AuthenticationOk, ParameterStatus, BackendKeyData, notices
        };
        if !c.send(&msg).await {
            return Login::Ended(ReadEnd::Timeout);
        }
    }
}

/// A frame with `tag` and `body`, length computed.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    frame(b'Q', &b)
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &b)
}

/// Bind with text parameters (None = NULL) and text results.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &b)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &b)
}

/// Describe ('D') or Close ('C') of a statement ('S') or portal ('P').
pub fn target(tag: u8, kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    frame(tag, &b)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    frame(b'X', &[])
}

/// FunctionCall ('F') of `oid` with one text argument.
pub fn function_call(oid: u32, arg: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(oid);
    b.put_i16(0); // argument formats: all text
    b.put_i16(1);
    b.put_i32(arg.len() as i32);
    b.put_slice(arg.as_bytes());
    b.put_i16(0); // result format text
    frame(b'F', &b)
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    fe::startup_message(params.iter().copied(), &mut out).expect("startup message");
    out.to_vec()
}
