//! The PostgreSQL lexer shared by the router's normalizer and keyword fallback.
//!
//! Owns: splitting SQL text into tokens with PostgreSQL's lexical rules: `'...'` strings
//! with `''` escapes, `E'...'` with backslash escapes, `$tag$...$tag$` dollar quoting,
//! numbers (`42`, `1.5e3`, `.5`, `0x1F`, `1_000`), `B'0101'` / `X'1F'` bit strings,
//! `U&'...'` / `N'...'` strings, `"quoted identifiers"`, `$n` parameters, `--` and nested
//! `/* */` comments; and the owned (unescaped) value of a literal token. Must not: allocate
//! while lexing, interpret grammar, or panic; unterminated strings and comments run to the
//! end of the input.

use std::ops::Range;

use super::normalize::LiteralValue;

/// Kinds of string literal the lexer distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrKind {
    /// `'...'`
    Plain,
    /// `E'...'`
    Escape,
    /// `$tag$...$tag$`
    Dollar,
    /// `B'...'` or `X'...'`
    Bits,
    /// `U&'...'`, `N'...'`: kept verbatim in the key.
    Opaque,
}

/// One lexical token (byte range in the input is returned alongside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
    Word,
    QuotedIdent,
    Str(StrKind),
    Num,
    Param,
    /// One punctuation/operator byte, or `::`.
    Op,
    Space,
    Comment,
}

/// PostgreSQL lexer over bytes; ranges always fall on UTF-8 boundaries because every
/// non-ASCII byte belongs to a word, string, quoted identifier or comment.
pub(super) struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT: u8 = 4;

/// Byte classes: PostgreSQL whitespace (plus NUL), identifier start (`A-Za-z_` and every
/// non-ASCII byte) and identifier continuation (also digits and `$`).
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0) {
            t[b] = SPACE;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            t[b] = IDENT_START | IDENT;
        } else if c.is_ascii_digit() || c == b'$' {
            t[b] = IDENT;
        }
        b += 1;
    }
    t
};

fn is_ident_start(b: u8) -> bool {
    CLASS[b as usize] & IDENT_START != 0
}

pub(super) fn is_ident_char(b: u8) -> bool {
    CLASS[b as usize] & IDENT != 0
}

fn is_space(b: u8) -> bool {
    CLASS[b as usize] & SPACE != 0
}

impl<'a> Lexer<'a> {
    pub(super) fn new(sql: &'a str) -> Self {
        Lexer {
            s: sql.as_bytes(),
            pos: 0,
        }
    }

    /// Advance past bytes matching `f`.
    fn skip_while(&mut self, f: fn(u8) -> bool) {
        let rest = self.s.get(self.pos..).unwrap_or(&[]);
        self.pos += rest.iter().position(|&b| !f(b)).unwrap_or(rest.len());
    }

    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    /// Skip a quoted run starting at the opening quote `q`; doubled quotes escape.
    /// With `backslash`, `\x` escapes any byte. Unterminated runs end at the input end.
    fn skip_quoted(&mut self, q: u8, backslash: bool) {
        let mut i = self.pos + 1;
        while i < self.s.len() {
            let b = self.s[i];
            if backslash && b == b'\\' {
                i += 2;
            } else if b == q {
                if self.at(i + 1) == q {
                    i += 2;
                } else {
                    self.pos = i + 1;
                    return;
                }
            } else {
                i += 1;
            }
        }
        self.pos = self.s.len();
    }

    /// At `$`: a dollar-quoted string if a `$tag$` opener is here.
    fn try_dollar(&mut self) -> bool {
        let start = self.pos;
        let mut i = start + 1;
        if i < self.s.len() && is_ident_start(self.s[i]) {
            i += 1;
            while i < self.s.len() && (is_ident_char(self.s[i]) && self.s[i] != b'$') {
                i += 1;
            }
        }
        if self.at(i) != b'$' || i >= self.s.len() {
            return false;
        }
        let tag = &self.s[start..=i];
        let body = i + 1;
        let mut j = body;
        while j + tag.len() <= self.s.len() {
            if self.s[j] == b'$' && &self.s[j..j + tag.len()] == tag {
                self.pos = j + tag.len();
                return true;
            }
            j += 1;
        }
        self.pos = self.s.len();
        true
    }

    fn skip_digits(&mut self, radix_ok: fn(u8) -> bool) {
        while self.pos < self.s.len() {
            let b = self.s[self.pos];
            if radix_ok(b) || (b == b'_' && radix_ok(self.at(self.pos + 1))) {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn number(&mut self) {
        let b1 = self.at(self.pos + 1);
        if self.at(self.pos) == b'0' && matches!(b1 | 0x20, b'x' | b'o' | b'b') {
            let ok: fn(u8) -> bool = match b1 | 0x20 {
                b'x' => |b: u8| b.is_ascii_hexdigit(),
                b'o' => |b: u8| (b'0'..=b'7').contains(&b),
                _ => |b: u8| b == b'0' || b == b'1',
            };
            if ok(self.at(self.pos + 2)) {
                self.pos += 2;
                self.skip_digits(ok);
                return;
            }
        }
        let dec: fn(u8) -> bool = |b: u8| b.is_ascii_digit();
        self.skip_digits(dec);
        if self.at(self.pos) == b'.' && self.at(self.pos + 1) != b'.' {
            self.pos += 1;
            self.skip_digits(dec);
        }
        if self.at(self.pos) | 0x20 == b'e' {
            let mut i = self.pos + 1;
            if matches!(self.at(i), b'+' | b'-') {
                i += 1;
            }
            if self.at(i).is_ascii_digit() {
                self.pos = i;
                self.skip_digits(dec);
            }
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = (Tok, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        let b = *self.s.get(start)?;
        let b1 = self.at(start + 1);
        let tok = if is_space(b) {
            self.skip_while(is_space);
            Tok::Space
        } else if b == b'-' && b1 == b'-' {
            while self.pos < self.s.len() && !matches!(self.s[self.pos], b'\n' | b'\r') {
                self.pos += 1;
            }
            Tok::Comment
        } else if b == b'/' && b1 == b'*' {
            let mut depth = 0usize;
            let mut i = start;
            while i < self.s.len() {
                if self.s[i] == b'/' && self.at(i + 1) == b'*' {
                    depth += 1;
                    i += 2;
                } else if self.s[i] == b'*' && self.at(i + 1) == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            self.pos = i.min(self.s.len());
            Tok::Comment
        } else if b == b'\'' {
            self.skip_quoted(b'\'', false);
            Tok::Str(StrKind::Plain)
        } else if b == b'"' {
            self.skip_quoted(b'"', false);
            Tok::QuotedIdent
        } else if b1 == b'\'' && matches!(b | 0x20, b'e' | b'b' | b'x' | b'n') {
            self.pos += 1;
            let kind = match b | 0x20 {
                b'e' => StrKind::Escape,
                b'n' => StrKind::Opaque,
                _ => StrKind::Bits,
            };
            self.skip_quoted(b'\'', kind == StrKind::Escape);
            Tok::Str(kind)
        } else if b | 0x20 == b'u' && b1 == b'&' && matches!(self.at(start + 2), b'\'' | b'"') {
            let q = self.at(start + 2);
            self.pos += 2;
            self.skip_quoted(q, false);
            if q == b'"' {
                Tok::QuotedIdent
            } else {
                Tok::Str(StrKind::Opaque)
            }
        } else if is_ident_start(b) {
            self.skip_while(is_ident_char);
            Tok::Word
        } else if b.is_ascii_digit() || (b == b'.' && b1.is_ascii_digit()) {
            self.number();
            Tok::Num
        } else if b == b'$' && b1.is_ascii_digit() {
            self.pos += 1;
            while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                self.pos += 1;
            }
            Tok::Param
        } else if b == b'$' && self.try_dollar() {
            Tok::Str(StrKind::Dollar)
        } else {
            self.pos += if b == b':' && b1 == b':' { 2 } else { 1 };
            Tok::Op
        };
        if self.pos <= start {
            self.pos = start + 1; // never loop forever
        }
        Some((tok, start..self.pos.min(self.s.len())))
    }
}

/// The owned value of a literal token `text` (which includes its quotes/prefix).
pub(super) fn literal_value(tok: Tok, text: &str) -> LiteralValue {
    let after_prefix = text.get(1..).unwrap_or("");
    match tok {
        Tok::Num => LiteralValue::Num(text.to_owned()),
        Tok::Str(StrKind::Dollar) => {
            let open = after_prefix.find('$').map_or(text.len(), |i| i + 2);
            let tag = text.get(..open).unwrap_or("");
            let body = text.get(open..).unwrap_or("");
            let body = match body.strip_suffix(tag) {
                Some(b) if !tag.is_empty() => b,
                _ => body,
            };
            LiteralValue::Str(body.to_owned())
        }
        Tok::Str(StrKind::Escape) => LiteralValue::Str(unescape_e(quoted_body(after_prefix, true))),
        Tok::Str(StrKind::Bits) => LiteralValue::Str(quoted_body(after_prefix, false).to_owned()),
        _ => LiteralValue::Str(quoted_body(text, false).replace("''", "'")),
    }
}

/// The text between the opening quote of `t` and its closing quote (or the input end).
fn quoted_body(t: &str, backslash: bool) -> &str {
    let b = t.as_bytes();
    let mut i = 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == b'\'' {
            if b.get(i + 1) == Some(&b'\'') {
                i += 2;
            } else {
                return t.get(1..i).unwrap_or("");
            }
        } else {
            i += 1;
        }
    }
    t.get(1..).unwrap_or("")
}

/// Unescape the body of an `E'...'` string (PostgreSQL backslash escapes and `''`).
fn unescape_e(body: &str) -> String {
    let b = body.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |s: &[u8]| {
        s.iter()
            .try_fold(0u32, |a, &c| Some(a * 16 + (c as char).to_digit(16)?))
    };
    while i < b.len() {
        let c = b[i];
        if c == b'\'' && b.get(i + 1) == Some(&b'\'') {
            out.push(b'\'');
            i += 2;
            continue;
        }
        if c != b'\\' || i + 1 >= b.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = b[i + 1];
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut k = 0;
                while k < 2 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' | b'u' | b'U' => {
                let max = match e {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let mut n = 0;
                while n < max && b.get(i + n).is_some_and(|c| c.is_ascii_hexdigit()) {
                    n += 1;
                }
                match hex(&b[i..i + n]) {
                    Some(v) if n > 0 && e == b'x' => out.push(v as u8),
                    Some(v) if n > 0 => {
                        let ch = char::from_u32(v).unwrap_or('\u{fffd}');
                        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    _ => out.push(e),
                }
                i += n;
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
