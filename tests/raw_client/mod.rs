//! A minimal blocking PostgreSQL wire-protocol client for tests that must see exact
//! messages (CopyInResponse, CopyData, tags) or misbehave on purpose (disconnect mid-COPY,
//! read slowly). Trust authentication only. Every read has a timeout, so a hang fails the
//! test instead of hanging it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

/// One backend message: tag and body.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// SQLSTATE of an ErrorResponse ('C' field).
    pub fn code(&self) -> String {
        self.field(b'C')
    }
    pub fn message(&self) -> String {
        self.field(b'M')
    }
    pub fn field(&self, f: u8) -> String {
        let mut i = 0;
        while i < self.body.len() && self.body[i] != 0 {
            let t = self.body[i];
            let end = self.body[i + 1..]
                .iter()
                .position(|&b| b == 0)
                .map(|p| i + 1 + p)
                .unwrap_or(self.body.len());
            if t == f {
                return String::from_utf8_lossy(&self.body[i + 1..end]).into_owned();
            }
            i = end + 1;
        }
        String::new()
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

pub fn query_frame(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    frame(b'Q', &b)
}

impl Raw {
    /// Connect as `user` to `db` (trust auth) and wait for ReadyForQuery.
    pub fn connect(port: u16, user: &str, db: &str) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to pgvane");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = Raw {
            s,
            buf: Vec::new(),
            pos: 0,
        };
        let mut body = (3u32 << 16).to_be_bytes().to_vec();
        for kv in ["user", user, "database", db, ""] {
            body.extend_from_slice(kv.as_bytes());
            body.push(0);
        }
        let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        pkt.extend_from_slice(&body);
        r.s.write_all(&pkt).unwrap();
        loop {
            let m = r.read_msg();
            assert_ne!(m.tag, b'E', "login failed: {}", m.message());
            if m.tag == b'Z' {
                return r;
            }
        }
    }

    pub fn set_timeout(&self, d: Duration) {
        self.s.set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to pgvane");
    }

    pub fn query(&mut self, sql: &str) {
        self.send(&query_frame(sql));
    }

    pub fn copy_data(&mut self, data: &[u8]) {
        self.send(&frame(b'd', data));
    }

    pub fn copy_done(&mut self) {
        self.send(&frame(b'c', &[]));
    }

    pub fn copy_fail(&mut self, why: &str) {
        let mut b = why.as_bytes().to_vec();
        b.push(0);
        self.send(&frame(b'f', &b));
    }

    fn fill(&mut self, want: usize, chunk: usize) {
        while self.buf.len() - self.pos < want {
            if self.pos > 0 && self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
            }
            let mut tmp = vec![0u8; chunk.max(want - (self.buf.len() - self.pos)).min(1 << 20)];
            let n = match self.s.read(&mut tmp) {
                Ok(n) => n,
                Err(e) => panic!("read from pgvane failed (a hang?): {e}"),
            };
            assert!(n > 0, "pgvane closed the connection");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Read one message (reads in chunks of up to 64 KiB).
    pub fn read_msg(&mut self) -> Msg {
        self.read_msg_chunked(64 * 1024)
    }

    /// Read one message, reading the socket `chunk` bytes at a time.
    pub fn read_msg_chunked(&mut self, chunk: usize) -> Msg {
        self.fill(5, chunk);
        let h = &self.buf[self.pos..self.pos + 5];
        let tag = h[0];
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        self.fill(1 + len, chunk);
        let body = self.buf[self.pos + 5..self.pos + 1 + len].to_vec();
        self.pos += 1 + len;
        if self.pos > 1 << 20 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Msg { tag, body }
    }

    /// Read messages up to and including ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = self.read_msg();
            let z = m.tag == b'Z';
            v.push(m);
            if z {
                return v;
            }
        }
    }
}

/// The tags of a message list, as a string ("GCZ").
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter()
        .filter(|m| !matches!(m.tag, b'N' | b'S'))
        .map(|m| m.tag as char)
        .collect()
}

/// The first ErrorResponse of a list.
pub fn error_of(msgs: &[Msg]) -> Option<&Msg> {
    msgs.iter().find(|m| m.tag == b'E')
}
