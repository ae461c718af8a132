//! A raw frontend for protocol tests: build messages byte by byte, send them in exactly the
//! writes a test wants, and read backend messages with a timeout (a missing answer is a
//! test failure, never a hang).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One backend message: type byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse/NoticeResponse.
    pub fn code(&self) -> Option<String> {
        self.field(b'C')
    }

    /// A field of an ErrorResponse/NoticeResponse.
    pub fn field(&self, which: u8) -> Option<String> {
        let mut b = &self.body[..];
        while let Some((&t, rest)) = b.split_first() {
            if t == 0 {
                break;
            }
            let end = rest.iter().position(|&c| c == 0)?;
            if t == which {
                return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            }
            b = &rest[end + 1..];
        }
        None
    }

    /// First column of a DataRow as text.
    pub fn first_value(&self) -> Option<String> {
        let b = &self.body;
        let len = i32::from_be_bytes(b.get(2..6)?.try_into().ok()?);
        if len < 0 {
            return None;
        }
        Some(String::from_utf8_lossy(b.get(6..6 + len as usize)?).into_owned())
    }

    /// CommandComplete tag.
    pub fn tag_text(&self) -> String {
        String::from_utf8_lossy(self.body.strip_suffix(&[0]).unwrap_or(&self.body)).into_owned()
    }
}

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    frame(b'Q', &b)
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0u16.to_be_bytes());
    frame(b'P', &b)
}

/// Parse with declared parameter type OIDs.
pub fn parse_typed(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &b)
}

/// Bind with text-format parameters (None = NULL) and text results.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    frame(b'B', &b)
}

pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    frame(b'D', &b)
}

pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    frame(b'C', &b)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    frame(b'd', data)
}

pub fn copy_done() -> Vec<u8> {
    frame(b'c', &[])
}

pub fn terminate() -> Vec<u8> {
    frame(b'X', &[])
}

pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

/// A raw connection to pgvane (or PostgreSQL) with trust authentication.
pub struct Wire {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    /// Connect and log in (the server must not ask for a password).
    pub fn login(port: u16, user: &str, db: &str) -> Wire {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).ok();
        let mut w = Wire { s, buf: Vec::new() };
        w.send(&startup(&[("user", user), ("database", db)]));
        let msgs = w.until_ready(Duration::from_secs(10));
        assert!(
            msgs.iter().any(|m| m.tag == b'R'),
            "login answered with {msgs:?}"
        );
        assert!(
            !msgs.iter().any(|m| m.tag == b'E'),
            "login failed: {msgs:?}"
        );
        w
    }

    /// Connect with these startup parameters (trust authentication) and return what the
    /// login answered, up to its ReadyForQuery or error.
    pub fn login_with(port: u16, params: &[(&str, &str)]) -> (Wire, Vec<Msg>) {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).ok();
        let mut w = Wire { s, buf: Vec::new() };
        w.send(&startup(params));
        let mut msgs = Vec::new();
        while let Some(m) = w.recv(Duration::from_secs(10)) {
            let end = matches!(m.tag, b'Z' | b'E');
            msgs.push(m);
            if end {
                break;
            }
        }
        (w, msgs)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    pub fn send_all(&mut self, msgs: &[Vec<u8>]) {
        let v: Vec<u8> = msgs.concat();
        self.send(&v);
    }

    /// The next message, or None when nothing arrives within `timeout` (or on EOF).
    pub fn recv(&mut self, timeout: Duration) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Some(Msg { tag, body });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok();
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery; panics if it does not come.
    pub fn until_ready(&mut self, timeout: Duration) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            match self.recv(timeout) {
                Some(m) => {
                    let done = m.tag == b'Z';
                    out.push(m);
                    if done {
                        return out;
                    }
                }
                None => panic!("no ReadyForQuery within {timeout:?}; got {out:?}"),
            }
        }
    }

    /// Messages until nothing more arrives for `quiet` (for checking that nothing is sent).
    pub fn drain(&mut self, quiet: Duration) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv(quiet) {
            out.push(m);
        }
        out
    }

    /// Run a simple query and return the first column of each row; panics on error or hang.
    pub fn simple(&mut self, sql: &str) -> Vec<String> {
        self.send(&query(sql));
        let msgs = self.until_ready(Duration::from_secs(10));
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            panic!("{sql}: {:?} {:?}", e.code(), e.field(b'M'));
        }
        msgs.iter()
            .filter(|m| m.tag == b'D')
            .filter_map(|m| m.first_value())
            .collect()
    }
}

/// Message type bytes of `msgs`, as a string ("1E" "Z" ...), for compact assertions.
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// FunctionCall with binary int4 arguments and a binary result.
pub fn function_call(oid: u32, args: &[i32]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&a.to_be_bytes());
    }
    b.extend_from_slice(&1u16.to_be_bytes());
    frame(b'F', &b)
}
