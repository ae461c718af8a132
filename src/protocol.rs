//! PostgreSQL v3 wire protocol: framing and the few messages the proxy builds or inspects.
//!
//! Owns: splitting a byte stream into frames (`tag`, 4-byte length, body) without copying,
//! decoding the startup packet, reading the fields the pooler must look at (statement names
//! in Parse/Bind/Describe/Close, ReadyForQuery status, ErrorResponse fields) and encoding the
//! messages pgvane answers itself (ErrorResponse, ReadyForQuery, authentication requests, ...).
//!
//! Must not: do I/O, keep session state or decide anything about routing or pooling. Every
//! function here is pure so tests and benchmarks can call it directly.

use bytes::{BufMut, Bytes, BytesMut};

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
/// Request codes that share the startup packet's framing.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Largest startup packet accepted (PostgreSQL uses 10000).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A violation of the wire protocol by the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ProtocolError {}

/// Split one complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. The frame includes its tag and length, so it
/// can be forwarded as is. `max_len` bounds the length field (the body plus 4).
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Bytes>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError(format!(
            "invalid message length {len} for message type {:?}",
            buf[0] as char
        )));
    }
    let len = len as usize;
    if len > max_len {
        return Err(ProtocolError(format!(
            "message of type {:?} too large: {len} bytes (limit {max_len})",
            buf[0] as char
        )));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(len + 1).freeze()))
}

/// Make room to read more bytes into `buf`: at least `chunk` free bytes when fewer than
/// `min` are free, and a buffer that grew past [`SHRINK_AT`] for one large message is
/// dropped once empty.
///
/// Call it only when `buf` holds no complete frame (what is buffered is at most one partial
/// frame). `BytesMut::reserve` doubles a buffer that holds more unread bytes than read ones,
/// so reserving while complete frames are still waiting lets a fast peer grow the buffer
/// with every read: a slow client's fan-out grew two shard buffers to ~40 MiB each.
pub fn read_room(buf: &mut BytesMut, min: usize, chunk: usize) {
    if buf.is_empty() && buf.capacity() > SHRINK_AT {
        *buf = BytesMut::with_capacity(chunk);
    } else if buf.capacity() - buf.len() < min {
        buf.reserve(chunk);
    }
}

/// See [`read_room`].
pub const SHRINK_AT: usize = 1024 * 1024;

/// The body of a frame (after tag and length).
#[inline]
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

/// What arrived as the first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A v3 startup: the minor version requested and the parameters in order.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Decode a startup-phase packet body (everything after the 4-byte length).
pub fn parse_startup(packet: &[u8]) -> Result<Startup, ProtocolError> {
    if packet.len() < 4 {
        return Err(ProtocolError("startup packet too short".into()));
    }
    let code = i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
    let rest = &packet[4..];
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST => {
            if rest.len() < 8 {
                return Err(ProtocolError("cancel request too short".into()));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(Startup::Cancel { pid, secret })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError(format!(
                    "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                )));
            }
            let mut params = Vec::new();
            let mut r = rest;
            loop {
                let key = read_cstr(&mut r)?;
                if key.is_empty() {
                    break;
                }
                let value = read_cstr(&mut r)?;
                params.push((lossy(key), lossy(value)));
            }
            Ok(Startup::Startup { minor, params })
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Read a NUL-terminated string and advance past it.
pub fn read_cstr<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ProtocolError> {
    match buf.iter().position(|&b| b == 0) {
        Some(pos) => {
            let s = &buf[..pos];
            *buf = &buf[pos + 1..];
            Ok(s)
        }
        None => Err(ProtocolError("missing string terminator".into())),
    }
}

fn read_i16(buf: &mut &[u8]) -> Result<i16, ProtocolError> {
    if buf.len() < 2 {
        return Err(ProtocolError("message truncated".into()));
    }
    let v = i16::from_be_bytes([buf[0], buf[1]]);
    *buf = &buf[2..];
    Ok(v)
}

fn read_i32(buf: &mut &[u8]) -> Result<i32, ProtocolError> {
    if buf.len() < 4 {
        return Err(ProtocolError("message truncated".into()));
    }
    let v = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    *buf = &buf[4..];
    Ok(v)
}

/// Fields of a Parse ('P') message, borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The parameter-type section as it appears on the wire (count + OIDs).
    pub param_types: &'a [u8],
}

pub fn parse_parse(frame: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let mut b = body(frame);
    let name = read_cstr(&mut b)?;
    let query = read_cstr(&mut b)?;
    let param_types = b;
    let mut check = b;
    let n = read_i16(&mut check)?;
    if n < 0 || check.len() != n as usize * 4 {
        return Err(ProtocolError("malformed Parse parameter types".into()));
    }
    Ok(ParseMsg {
        name,
        query,
        param_types,
    })
}

/// Fields of a Bind ('B') message: the names, and the rest of the body untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMsg<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Everything after the statement name (formats, parameters, result formats).
    pub rest: &'a [u8],
}

pub fn parse_bind(frame: &[u8]) -> Result<BindMsg<'_>, ProtocolError> {
    let mut b = body(frame);
    let portal = read_cstr(&mut b)?;
    let statement = read_cstr(&mut b)?;
    Ok(BindMsg {
        portal,
        statement,
        rest: b,
    })
}

/// Parameter values of a Bind, decoded lazily: (format code, value or None for NULL).
/// One Bind parameter: its format code (0 text, 1 binary) and value (None for NULL).
pub type BindParam<'a> = (i16, Option<&'a [u8]>);

pub fn bind_params(rest: &[u8]) -> Result<Vec<BindParam<'_>>, ProtocolError> {
    let mut b = rest;
    let nfmt = read_i16(&mut b)?;
    if nfmt < 0 {
        return Err(ProtocolError("negative format count".into()));
    }
    let mut formats = Vec::with_capacity(nfmt as usize);
    for _ in 0..nfmt {
        formats.push(read_i16(&mut b)?);
    }
    let nparams = read_i16(&mut b)?;
    if nparams < 0 {
        return Err(ProtocolError("negative parameter count".into()));
    }
    let mut out = Vec::with_capacity(nparams as usize);
    for i in 0..nparams as usize {
        let fmt = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i).unwrap_or(&0),
        };
        let len = read_i32(&mut b)?;
        if len < 0 {
            out.push((fmt, None));
        } else {
            let len = len as usize;
            if b.len() < len {
                return Err(ProtocolError("Bind parameter truncated".into()));
            }
            out.push((fmt, Some(&b[..len])));
            b = &b[len..];
        }
    }
    Ok(out)
}

/// Describe ('D') and Close ('C') share a shape: a kind byte ('S' or 'P') and a name.
/// PostgreSQL's limit on the declared length of a frontend message of type `tag` after
/// login: 10,000 bytes for the small control messages, the caller's limit for the others;
/// None for a type PostgreSQL does not accept (it ends the connection at once, before
/// reading the message).
pub fn frontend_limit(tag: u8, large: usize) -> Option<usize> {
    match tag {
        b'Q' | b'F' | b'B' | b'P' | b'd' => Some(large),
        b'C' | b'D' | b'E' | b'H' | b'S' | b'X' | b'c' | b'f' => Some(10_000),
        _ => None,
    }
}

/// Check the header of the next frontend message as soon as its bytes arrive, as
/// PostgreSQL does: an unknown type or a length over its limit ends the connection without
/// waiting for the rest.
pub fn check_frontend_header(buf: &[u8], large: usize) -> Result<(), ProtocolError> {
    let Some(&tag) = buf.first() else {
        return Ok(());
    };
    let Some(limit) = frontend_limit(tag, large) else {
        return Err(ProtocolError(format!(
            "invalid frontend message type {tag}"
        )));
    };
    if let Some(l) = buf.get(1..5) {
        let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        if len < 4 || len as usize > limit {
            return Err(ProtocolError("invalid message length".into()));
        }
    }
    Ok(())
}

/// The row limit of an Execute frame (None when malformed).
pub fn execute_max_rows(frame: &[u8]) -> Option<i32> {
    let body = frame.get(5..)?;
    let nul = body.iter().position(|b| *b == 0)?;
    let n = body.get(nul + 1..nul + 5)?;
    Some(i32::from_be_bytes([n[0], n[1], n[2], n[3]]))
}

pub fn parse_target(frame: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    let mut b = body(frame);
    if b.is_empty() {
        return Err(ProtocolError("message truncated".into()));
    }
    let kind = b[0];
    b = &b[1..];
    let name = read_cstr(&mut b)?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError(format!(
            "invalid target type {:?}",
            kind as char
        )));
    }
    Ok((kind, name))
}

/// The SQL text of a simple Query ('Q').
pub fn query_text(frame: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut b = body(frame);
    read_cstr(&mut b)
}

/// Fields of an ErrorResponse or NoticeResponse we care about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn parse_error(frame: &[u8]) -> ErrorFields {
    let mut out = ErrorFields::default();
    let mut b = body(frame);
    while let Some((&t, rest)) = b.split_first() {
        if t == 0 {
            break;
        }
        b = rest;
        let Ok(v) = read_cstr(&mut b) else { break };
        match t {
            b'V' => out.severity = lossy(v),
            b'S' if out.severity.is_empty() => out.severity = lossy(v),
            b'C' => out.code = lossy(v),
            b'M' => out.message = lossy(v),
            _ => {}
        }
    }
    out
}

/// Rewrite an ErrorResponse's FATAL/PANIC severity to ERROR, so a client whose server died
/// keeps its own connection to pgvane.
pub fn downgrade_fatal(frame: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(frame[0]);
    out.put_i32(0);
    let mut b = body(frame);
    while let Some((&t, rest)) = b.split_first() {
        if t == 0 {
            break;
        }
        b = rest;
        let Ok(v) = read_cstr(&mut b) else { break };
        out.put_u8(t);
        if (t == b'S' || t == b'V') && (v == b"FATAL" || v == b"PANIC") {
            out.put_slice(b"ERROR");
        } else {
            out.put_slice(v);
        }
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// Encoders. Each appends one message to `out`.

fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    start
}

fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let s = begin(out, b'E');
    out.put_u8(b'S');
    put_cstr(out, severity.as_bytes());
    out.put_u8(b'V');
    put_cstr(out, severity.as_bytes());
    out.put_u8(b'C');
    put_cstr(out, code.as_bytes());
    out.put_u8(b'M');
    put_cstr(out, message.as_bytes());
    out.put_u8(0);
    finish(out, s);
}

pub fn notice_response(out: &mut BytesMut, code: &str, message: &str) {
    let s = begin(out, b'N');
    out.put_u8(b'S');
    put_cstr(out, b"NOTICE");
    out.put_u8(b'V');
    put_cstr(out, b"NOTICE");
    out.put_u8(b'C');
    put_cstr(out, code.as_bytes());
    out.put_u8(b'M');
    put_cstr(out, message.as_bytes());
    out.put_u8(0);
    finish(out, s);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    out.put_u8(b'Z');
    out.put_i32(5);
    out.put_u8(status);
}

pub fn parameter_status(out: &mut BytesMut, key: &str, value: &str) {
    let s = begin(out, b'S');
    put_cstr(out, key.as_bytes());
    put_cstr(out, value.as_bytes());
    finish(out, s);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u8(b'K');
    out.put_i32(12);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// NegotiateProtocolVersion: the newest minor version we support and unrecognised options.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, options: &[&str]) {
    let s = begin(out, b'v');
    out.put_i32(PROTOCOL_3_0 | minor);
    out.put_i32(options.len() as i32);
    for o in options {
        put_cstr(out, o.as_bytes());
    }
    finish(out, s);
}

pub fn auth_ok(out: &mut BytesMut) {
    out.put_u8(b'R');
    out.put_i32(8);
    out.put_i32(0);
}

pub fn auth_cleartext(out: &mut BytesMut) {
    out.put_u8(b'R');
    out.put_i32(8);
    out.put_i32(3);
}

pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    out.put_u8(b'R');
    out.put_i32(12);
    out.put_i32(5);
    out.put_slice(&salt);
}

pub fn auth_sasl(out: &mut BytesMut, mechanism: &str) {
    let s = begin(out, b'R');
    out.put_i32(10);
    put_cstr(out, mechanism.as_bytes());
    out.put_u8(0);
    finish(out, s);
}

pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    let s = begin(out, b'R');
    out.put_i32(11);
    out.put_slice(data);
    finish(out, s);
}

pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    let s = begin(out, b'R');
    out.put_i32(12);
    out.put_slice(data);
    finish(out, s);
}

pub fn parse_complete(out: &mut BytesMut) {
    out.put_u8(b'1');
    out.put_i32(4);
}

pub fn close_complete(out: &mut BytesMut) {
    out.put_u8(b'3');
    out.put_i32(4);
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let s = begin(out, b'C');
    put_cstr(out, tag.as_bytes());
    finish(out, s);
}

/// RowDescription for text columns (type text, OID 25).
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    let s = begin(out, b'T');
    out.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(out, c.as_bytes());
        out.put_i32(0); // table oid
        out.put_i16(0); // attnum
        out.put_i32(25); // type oid: text
        out.put_i16(-1); // typlen
        out.put_i32(-1); // typmod
        out.put_i16(0); // text format
    }
    finish(out, s);
}

/// DataRow with text values (None = NULL).
/// The columns of a DataRow as text (None for NULL); a malformed row gives what parsed.
pub fn data_row_texts(frame: &[u8]) -> Vec<Option<String>> {
    let mut b = body(frame);
    let mut out = Vec::new();
    let Some(n) = b.get(..2).map(|x| i16::from_be_bytes([x[0], x[1]])) else {
        return out;
    };
    b = &b[2..];
    for _ in 0..n.max(0) {
        let Some(l) = b
            .get(..4)
            .map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        else {
            break;
        };
        b = &b[4..];
        if l < 0 {
            out.push(None);
            continue;
        }
        let Some(v) = b.get(..l as usize) else { break };
        out.push(Some(String::from_utf8_lossy(v).into_owned()));
        b = &b[l as usize..];
    }
    out
}

pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let s = begin(out, b'D');
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    finish(out, s);
}

pub fn query(out: &mut BytesMut, sql: &str) {
    let s = begin(out, b'Q');
    put_cstr(out, sql.as_bytes());
    finish(out, s);
}

pub fn sync(out: &mut BytesMut) {
    out.put_u8(b'S');
    out.put_i32(4);
}

pub fn terminate(out: &mut BytesMut) {
    out.put_u8(b'X');
    out.put_i32(4);
}

/// Parse ('P') with a given statement name, query and raw parameter-type section.
pub fn parse_msg(out: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u8]) {
    let s = begin(out, b'P');
    put_cstr(out, name);
    put_cstr(out, query);
    out.put_slice(param_types);
    finish(out, s);
}

/// Bind ('B') with the statement name replaced.
pub fn bind_msg(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    let s = begin(out, b'B');
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_slice(rest);
    finish(out, s);
}

/// Describe ('D') or Close ('C') of a statement or portal.
pub fn target_msg(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let s = begin(out, tag);
    out.put_u8(kind);
    put_cstr(out, name);
    finish(out, s);
}

/// Flush ('H').
pub fn flush_msg(out: &mut BytesMut) {
    out.put_slice(&[b'H', 0, 0, 0, 4]);
}

/// The result shape a statement Describe answered (RowDescription or NoData), as PostgreSQL
/// compares it when it revalidates a prepared statement ("cached plan must not change result
/// type"): column count, names, type OIDs and modifiers. The table OID and column number are
/// left out (a table dropped and created again with the same columns keeps its shape), and
/// so is the format code (always text in a statement's description).
pub fn row_shape(frame: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if frame.first() != Some(&b'T') || frame.len() < 7 {
        0u16.hash(&mut h);
        return h.finish();
    }
    let n = u16::from_be_bytes([frame[5], frame[6]]);
    n.hash(&mut h);
    let mut at = 7;
    for _ in 0..n {
        let Some(end) = frame.get(at..).and_then(|b| b.iter().position(|&c| c == 0)) else {
            break;
        };
        frame[at..at + end].hash(&mut h);
        at += end + 1;
        // table OID (4), column number (2): skipped; type OID (4), size (2), modifier (4):
        // hashed; format (2): skipped.
        if let Some(f) = frame.get(at + 6..at + 16) {
            f.hash(&mut h);
        }
        at += 18;
    }
    h.finish()
}

/// A StartupMessage (protocol 3.0) with the given parameters.
pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k.as_bytes());
        put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// PasswordMessage ('p') carrying a NUL-terminated password or md5 response.
pub fn password_message(out: &mut BytesMut, password: &[u8]) {
    let s = begin(out, b'p');
    put_cstr(out, password);
    finish(out, s);
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let s = begin(out, b'p');
    put_cstr(out, mechanism.as_bytes());
    out.put_i32(data.len() as i32);
    out.put_slice(data);
    finish(out, s);
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    let s = begin(out, b'p');
    out.put_slice(data);
    finish(out, s);
}

/// Decode a SASLInitialResponse body: (mechanism, data).
pub fn parse_sasl_initial(frame: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let mut b = body(frame);
    let mech = read_cstr(&mut b)?;
    let len = read_i32(&mut b)?;
    if len < 0 {
        return Ok((mech, &[]));
    }
    if b.len() != len as usize {
        return Err(ProtocolError("SASLInitialResponse length mismatch".into()));
    }
    Ok((mech, b))
}

/// Authentication request ('R') sent by a server: its code and the remaining bytes.
pub fn parse_auth_request(frame: &[u8]) -> Result<(i32, &[u8]), ProtocolError> {
    let mut b = body(frame);
    let code = read_i32(&mut b)?;
    Ok((code, b))
}

/// ParameterStatus ('S') from a server: (name, value).
pub fn parse_parameter_status(frame: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut b = body(frame);
    let k = read_cstr(&mut b)?;
    let v = read_cstr(&mut b)?;
    Ok((lossy(k), lossy(v)))
}

/// BackendKeyData ('K'): (pid, secret).
pub fn parse_backend_key(frame: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut b = body(frame);
    let pid = read_i32(&mut b)?;
    let secret = read_i32(&mut b)?;
    Ok((pid, secret))
}

/// The command tag of a CommandComplete ('C').
pub fn command_tag(frame: &[u8]) -> &[u8] {
    let mut b = body(frame);
    read_cstr(&mut b).unwrap_or(&[])
}

/// Quote a string as a SQL literal ('...' with doubled quotes).
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that always has more to send: 1 KiB DataRows, as a shard streams to a slow
    /// client; each read returns what the socket has, at most the free space (`seed` picks
    /// the amount, up to the 4 MiB a loopback socket buffers).
    fn read_from_fast_peer(buf: &mut BytesMut, sent: &mut usize, seed: &mut u64) {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let avail = 512 + (*seed >> 33) as usize % (4 << 20);
        let n = avail.min(buf.capacity() - buf.len());
        for _ in 0..n {
            let at = *sent % 1025;
            buf.put_u8(match at {
                0 => b'D',
                1..=4 => 1024u32.to_be_bytes()[at - 1],
                _ => b'x',
            });
            *sent += 1;
        }
    }

    fn row_description(cols: &[(&str, u32, u32, i32)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let s = begin(&mut out, b'T');
        out.put_u16(cols.len() as u16);
        for (name, table, ty, typmod) in cols {
            put_cstr(&mut out, name.as_bytes());
            out.put_u32(*table);
            out.put_u16(1);
            out.put_u32(*ty);
            out.put_i16(4);
            out.put_i32(*typmod);
            out.put_u16(0);
        }
        finish(&mut out, s);
        out.to_vec()
    }

    #[test]
    fn row_shape_is_what_postgres_compares_on_revalidation() {
        let int = row_description(&[("col", 16384, 23, -1)]);
        let recreated = row_description(&[("col", 16999, 23, -1)]);
        let small = row_description(&[("col", 16384, 21, -1)]);
        let renamed = row_description(&[("c", 16384, 23, -1)]);
        let two = row_description(&[("col", 16384, 23, -1), ("b", 16384, 25, -1)]);
        let varchar10 = row_description(&[("col", 16384, 1043, 14)]);
        let varchar20 = row_description(&[("col", 16384, 1043, 24)]);
        assert_eq!(row_shape(&int), row_shape(&recreated), "table OID ignored");
        assert_ne!(row_shape(&int), row_shape(&small), "type");
        assert_ne!(row_shape(&int), row_shape(&renamed), "name");
        assert_ne!(row_shape(&int), row_shape(&two), "columns");
        assert_ne!(row_shape(&varchar10), row_shape(&varchar20), "modifier");
        assert_ne!(row_shape(&int), row_shape(&[b'n', 0, 0, 0, 4]), "NoData");
        assert_eq!(
            row_shape(&[b'n', 0, 0, 0, 4]),
            row_shape(&row_description(&[]))
        );
        // A truncated description does not panic.
        let _ = row_shape(&int[..12]);
    }

    #[test]
    fn reading_only_when_no_frame_is_buffered_keeps_the_buffer_small() {
        // What read_frame does: frames first, room and a read only when none is complete.
        let (mut sent, mut seed) = (0, 1);
        let mut buf = BytesMut::new();
        for _ in 0..200_000 {
            loop {
                if let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
                    assert_eq!(f.len(), 1025);
                    break;
                }
                read_room(&mut buf, 4096, 32 * 1024);
                read_from_fast_peer(&mut buf, &mut sent, &mut seed);
            }
        }
        assert!(buf.capacity() <= 128 * 1024, "grew to {}", buf.capacity());

        // The pattern it replaced, room made before every frame: the same peer grows the
        // buffer by doubling (this is what the fan-out did; it proves the check can fail).
        let (mut sent, mut seed) = (0, 1);
        let mut buf = BytesMut::new();
        for _ in 0..200_000 {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(32 * 1024);
            }
            loop {
                if let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
                    assert_eq!(f.len(), 1025);
                    break;
                }
                read_from_fast_peer(&mut buf, &mut sent, &mut seed);
            }
        }
        assert!(buf.capacity() > 1024 * 1024, "stayed at {}", buf.capacity());
    }

    #[test]
    fn a_buffer_grown_for_one_large_message_is_dropped_once_empty() {
        let mut buf = BytesMut::with_capacity(8 * 1024 * 1024);
        read_room(&mut buf, 4096, 32 * 1024);
        assert!(buf.capacity() < SHRINK_AT);
        buf.put_u8(b'D');
        let cap = buf.capacity();
        read_room(&mut buf, 4096, 32 * 1024);
        assert_eq!(buf.capacity(), cap, "room enough: untouched");
    }

    #[test]
    fn frames_split_and_wait_for_more() {
        let mut out = BytesMut::new();
        query(&mut out, "select 1");
        sync(&mut out);
        let whole = out.clone();
        let mut buf = BytesMut::from(&whole[..7]);
        assert_eq!(split_frame(&mut buf, 1 << 20).unwrap(), None);
        buf.extend_from_slice(&whole[7..]);
        let f1 = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(f1[0], b'Q');
        assert_eq!(query_text(&f1).unwrap(), b"select 1");
        let f2 = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(&f2[..], &[b'S', 0, 0, 0, 4]);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(split_frame(&mut buf, 1 << 20).is_err());
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0, 0, 0][..]);
        assert!(split_frame(&mut buf, 1 << 20).is_err());
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(split_frame(&mut buf, 1 << 20).is_err());
    }

    #[test]
    fn startup_roundtrip() {
        let mut out = BytesMut::new();
        startup_message(&mut out, &[("user", "app"), ("database", "db")]);
        match parse_startup(&out[4..]).unwrap() {
            Startup::Startup { minor, params } => {
                assert_eq!(minor, 0);
                assert_eq!(params[0], ("user".into(), "app".into()));
                assert_eq!(params[1], ("database".into(), "db".into()));
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut c = BytesMut::new();
        cancel_request(&mut c, 7, 9);
        assert_eq!(
            parse_startup(&c[4..]).unwrap(),
            Startup::Cancel { pid: 7, secret: 9 }
        );
        assert!(parse_startup(&[0, 2, 0, 0]).is_err());
        assert!(parse_startup(&[0, 3, 0, 0, b'u']).is_err());
    }

    #[test]
    fn parse_bind_describe_roundtrip() {
        let mut out = BytesMut::new();
        parse_msg(&mut out, b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
        let p = parse_parse(&out).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"select $1");
        let mut b = BytesMut::new();
        let rest = [
            0u8, 1, 0, 1, 0, 2, 0, 0, 0, 2, b'4', b'2', 0xff, 0xff, 0xff, 0xff, 0, 0,
        ];
        bind_msg(&mut b, b"", b"s1", &rest);
        let bm = parse_bind(&b).unwrap();
        assert_eq!(bm.statement, b"s1");
        let params = bind_params(bm.rest).unwrap();
        assert_eq!(params, vec![(1, Some(&b"42"[..])), (1, None)]);
        let mut d = BytesMut::new();
        target_msg(&mut d, b'D', b'S', b"s1");
        assert_eq!(parse_target(&d).unwrap(), (b'S', &b"s1"[..]));
    }

    #[test]
    fn error_fields_and_downgrade() {
        let mut out = BytesMut::new();
        error_response(&mut out, "FATAL", "57P01", "terminating");
        let e = parse_error(&out);
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "57P01");
        let mut d = BytesMut::new();
        downgrade_fatal(&out, &mut d);
        let e2 = parse_error(&d);
        assert_eq!(e2.severity, "ERROR");
        assert_eq!(e2.code, "57P01");
        assert_eq!(e2.message, "terminating");
        let mut buf = d.clone();
        let frame = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.len(), d.len());
    }

    #[test]
    fn literal_quoting() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
