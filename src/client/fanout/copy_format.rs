//! What a `COPY` statement on a sharded database asks for, and splitting `COPY FROM STDIN`
//! data (text and CSV formats) into rows with their sharding key.
//!
//! Owns: reading the statement (target, column list, format options as PostgreSQL parses
//! them for the common cases), finding each row's end and its key field in a stream of
//! CopyData bytes that do not respect row boundaries, and the errors PostgreSQL would raise
//! for a key it cannot read (22P02/22003, 22P04 for a missing column).
//!
//! Must not: do I/O, or hold more than one incomplete row of input. Pure functions of the
//! bytes; never panics on any input.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, Statement,
};

use crate::sharding::hash::{parse_key, KeyType, OwnedKey};
use crate::sharding::key::ShardedTable;

/// A refusal or a data error: SQLSTATE and message (and the CONTEXT line, if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyError {
    pub code: &'static str,
    pub message: String,
    pub context: Option<String>,
}

impl CopyError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        CopyError {
            code,
            message: message.into(),
            context: None,
        }
    }
}

fn unsupported(what: &str) -> CopyError {
    CopyError::new("0A000", format!("{what} on a sharded database is not supported by pgvane; use COPY ... FROM STDIN / TO STDOUT (psql's \\copy), or add a /* pgvane: shard=N */ hint to run it on one shard"))
}

/// Data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Csv,
    Binary,
}

/// Format options, with PostgreSQL's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    pub delimiter: u8,
    pub null: Vec<u8>,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
    pub force_not_null: Vec<String>,
    pub force_null: Vec<String>,
}

/// What a COPY statement is, for the fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyKind {
    /// `COPY table [(cols)] FROM STDIN`: `table` is the sharded table's index, None for a
    /// table that is not sharded (a reference table: every shard gets every row).
    FromStdin {
        table: Option<usize>,
        table_name: String,
        columns: Vec<String>,
        options: Options,
    },
    /// `COPY ... TO STDOUT`.
    ToStdout { options: Options },
}

fn ident_name(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

fn one_byte(c: char, what: &str) -> Result<u8, CopyError> {
    if c.is_ascii() {
        Ok(c as u8)
    } else {
        Err(CopyError::new(
            "0A000",
            format!("COPY {what} must be a single one-byte character (pgvane splits rows on it)"),
        ))
    }
}

/// Read the options of a COPY statement.
pub fn options(opts: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<Options, CopyError> {
    let mut format = Format::Text;
    let mut delimiter = None;
    let mut null = None;
    let mut header = false;
    let mut quote = b'"';
    let mut escape = None;
    let mut force_not_null = Vec::new();
    let mut force_null = Vec::new();
    for o in opts {
        match o {
            CopyOption::Format(f) => {
                format = match f.value.to_ascii_lowercase().as_str() {
                    "text" => Format::Text,
                    "csv" => Format::Csv,
                    "binary" => Format::Binary,
                    other => {
                        return Err(CopyError::new(
                            "22023",
                            format!("COPY format \"{other}\" not recognized"),
                        ))
                    }
                }
            }
            CopyOption::Freeze(_) | CopyOption::ForceQuote(_) => {}
            CopyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "delimiter")?),
            CopyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = one_byte(*c, "quote")?,
            CopyOption::Escape(c) => escape = Some(one_byte(*c, "escape")?),
            CopyOption::ForceNotNull(c) => force_not_null.extend(c.iter().map(ident_name)),
            CopyOption::ForceNull(c) => force_null.extend(c.iter().map(ident_name)),
            CopyOption::Encoding(e) => {
                let e = e.to_ascii_lowercase().replace(['-', '_'], "");
                if e != "utf8" {
                    return Err(unsupported("COPY with an ENCODING other than UTF8"));
                }
            }
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = Format::Binary,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "delimiter")?),
            CopyLegacyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Csv(csv) => {
                format = Format::Csv;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = one_byte(*q, "quote")?,
                        CopyLegacyCsvOption::Escape(e) => escape = Some(one_byte(*e, "escape")?),
                        CopyLegacyCsvOption::ForceQuote(_) => {}
                        CopyLegacyCsvOption::ForceNotNull(c) => {
                            force_not_null.extend(c.iter().map(ident_name))
                        }
                    }
                }
            }
            other => return Err(unsupported(&format!("the COPY option {other}"))),
        }
    }
    let csv = format == Format::Csv;
    Ok(Options {
        format,
        delimiter: delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
        null: null.unwrap_or_else(|| if csv { Vec::new() } else { b"\\N".to_vec() }),
        header,
        quote,
        escape: escape.unwrap_or(quote),
        force_not_null,
        force_null,
    })
}

/// Classify a COPY statement. Err: refused before anything is sent to a shard.
pub fn classify(stmt: &Statement, tables: &[ShardedTable]) -> Option<Result<CopyKind, CopyError>> {
    let Statement::Copy {
        source,
        to,
        target,
        options: opts,
        legacy_options,
        ..
    } = stmt
    else {
        return None;
    };
    let dir = if *to { "COPY TO" } else { "COPY FROM" };
    match (to, target) {
        (true, CopyTarget::Stdout) | (false, CopyTarget::Stdin) => {}
        (_, CopyTarget::File { .. }) => return Some(Err(unsupported(&format!("{dir} a file")))),
        (_, CopyTarget::Program { .. }) => {
            return Some(Err(unsupported(&format!("{dir} PROGRAM"))))
        }
        _ => return Some(Err(unsupported(dir))),
    }
    let options = match options(opts, legacy_options) {
        Ok(o) => o,
        Err(e) => return Some(Err(e)),
    };
    if *to {
        return Some(Ok(CopyKind::ToStdout { options }));
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Some(Err(unsupported("COPY (query) FROM")));
    };
    let parts: Vec<String> = table_name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(ident_name))
        .collect();
    let Some(last) = parts.last() else {
        return Some(Err(unsupported("this COPY")));
    };
    let schema = parts.len().checked_sub(2).and_then(|i| parts.get(i));
    let table = tables.iter().position(|t| {
        t.table.eq_ignore_ascii_case(last)
            && match (&t.schema, schema) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => true,
            }
    });
    let columns: Vec<String> = columns.iter().map(ident_name).collect();
    if let Some(t) = table {
        let key = &tables[t].column;
        if !columns.is_empty() && !columns.iter().any(|c| c == key) {
            return Some(Err(CopyError::new(
                "0A000",
                format!("COPY into the sharded table {} must include its sharding key column \"{key}\" in the column list", tables[t].table),
            )));
        }
        if options.format == Format::Binary {
            return Some(Err(unsupported("COPY FROM STDIN in binary format into a sharded table (pgvane must read each row's key)")));
        }
    }
    Some(Ok(CopyKind::FromStdin {
        table,
        table_name: parts.join("."),
        columns,
        options,
    }))
}

/// Splits COPY FROM data into rows and reads each row's key field.
pub struct RowSplitter {
    opts: Options,
    key_index: usize,
    key_column: String,
    key_type: KeyType,
    table: String,
    force_not_null: bool,
    force_null: bool,
    /// Bytes of an incomplete row.
    carry: Vec<u8>,
    /// Line number of the next row (1-based, as in PostgreSQL's CONTEXT).
    line: u64,
    header_pending: bool,
    /// The end-of-data marker `\.` was seen: the rest is ignored.
    pub ended: bool,
    max_row: usize,
}

/// A row found by the splitter.
#[derive(Debug, PartialEq, Eq)]
pub enum Row<'a> {
    /// The header line: every shard gets it.
    Header(&'a [u8]),
    /// A data row (with its line terminator) and its key.
    Data(&'a [u8], OwnedKey),
}

impl RowSplitter {
    pub fn new(
        opts: Options,
        key_index: usize,
        key_column: &str,
        key_type: KeyType,
        table: &str,
        max_row: usize,
    ) -> Self {
        RowSplitter {
            force_not_null: opts.force_not_null.iter().any(|c| c == key_column),
            force_null: opts.force_null.iter().any(|c| c == key_column),
            header_pending: opts.header,
            opts,
            key_index,
            key_column: key_column.to_string(),
            key_type,
            table: table.to_string(),
            carry: Vec::new(),
            line: 1,
            ended: false,
            max_row,
        }
    }

    /// Feed a CopyData payload; `row` is called for every complete row. `last`: the input
    /// ended (CopyDone), so an unterminated last line is a row too.
    pub fn feed(
        &mut self,
        data: &[u8],
        last: bool,
        row: &mut dyn FnMut(Row<'_>) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        if self.ended {
            return Ok(());
        }
        let mut carry = std::mem::take(&mut self.carry);
        let mut input: &[u8] = data;
        // Complete the carried row first, then work on `data` directly.
        if !carry.is_empty() {
            match self.line_end(&carry, data) {
                Some(end) => {
                    let take = end - carry.len();
                    carry.extend_from_slice(&data[..take]);
                    input = &data[take..];
                    self.one_row(&carry, row)?;
                    carry.clear();
                }
                None => {
                    carry.extend_from_slice(data);
                    input = &[];
                }
            }
        }
        while !input.is_empty() && !self.ended {
            match self.line_end(&[], input) {
                Some(end) => {
                    self.one_row(&input[..end], row)?;
                    input = &input[end..];
                }
                None => {
                    carry.extend_from_slice(input);
                    input = &[];
                }
            }
        }
        if carry.len() > self.max_row {
            return Err(CopyError::new("54000", "COPY row too long for pgvane"));
        }
        if last && !carry.is_empty() && !self.ended {
            let tail = std::mem::take(&mut carry);
            self.one_row(&tail, row)?;
        }
        self.carry = carry;
        Ok(())
    }

    /// End (exclusive, terminator included) of the first row of `head ++ tail`, if complete.
    fn line_end(&self, head: &[u8], tail: &[u8]) -> Option<usize> {
        let csv = self.opts.format == Format::Csv;
        let (q, e) = (self.opts.quote, self.opts.escape);
        let at = |i: usize| -> Option<u8> {
            if i < head.len() {
                head.get(i).copied()
            } else {
                tail.get(i - head.len()).copied()
            }
        };
        let total = head.len() + tail.len();
        let mut in_quote = false;
        let mut i = 0;
        while i < total {
            let c = at(i)?;
            if csv {
                if in_quote && c == e && e != q && matches!(at(i + 1), Some(n) if n == q || n == e)
                {
                    i += 2;
                    continue;
                }
                if c == q {
                    in_quote = !in_quote;
                } else if !in_quote && (c == b'\n' || c == b'\r') {
                    return self.eol(i, &at, total);
                }
            } else if c == b'\\' {
                i += 2;
                continue;
            } else if c == b'\n' || c == b'\r' {
                return self.eol(i, &at, total);
            }
            i += 1;
        }
        None
    }

    fn eol(&self, i: usize, at: &dyn Fn(usize) -> Option<u8>, total: usize) -> Option<usize> {
        if at(i) == Some(b'\r') {
            if i + 1 >= total {
                return None; // a "\r\n" may be split across messages
            }
            if at(i + 1) == Some(b'\n') {
                return Some(i + 2);
            }
        }
        Some(i + 1)
    }

    fn one_row(
        &mut self,
        line: &[u8],
        row: &mut dyn FnMut(Row<'_>) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        let lineno = self.line;
        self.line += 1;
        if std::mem::take(&mut self.header_pending) {
            return row(Row::Header(line));
        }
        let body = strip_eol(line);
        if body == b"\\." {
            self.ended = true;
            return Ok(());
        }
        let key = match self.opts.format {
            Format::Csv => self.csv_key(body),
            _ => self.text_key(body),
        };
        let ctx = |e: CopyError, raw: Option<&[u8]>| CopyError {
            context: Some(match raw {
                Some(v) => format!(
                    "COPY {}, line {lineno}, column {}: \"{}\"",
                    self.table,
                    self.key_column,
                    String::from_utf8_lossy(v)
                ),
                None => format!("COPY {}, line {lineno}", self.table),
            }),
            ..e
        };
        let value = match key {
            Some(v) => v,
            None => {
                return Err(ctx(
                    CopyError::new(
                        "22P04",
                        format!("missing data for column \"{}\"", self.key_column),
                    ),
                    None,
                ))
            }
        };
        let owned = match value {
            None => OwnedKey::Null,
            Some(v) => {
                let text = String::from_utf8_lossy(&v);
                match parse_key(&text, self.key_type) {
                    Ok(k) => k,
                    Err(msg) => {
                        let code = if msg.contains("out of range") {
                            "22003"
                        } else {
                            "22P02"
                        };
                        return Err(ctx(CopyError::new(code, msg), Some(&v)));
                    }
                }
            }
        };
        row(Row::Data(line, owned))
    }

    /// The key field of a text-format row: None if the row has too few fields; Some(None)
    /// for NULL.
    fn text_key(&self, body: &[u8]) -> Option<Option<Vec<u8>>> {
        let d = self.opts.delimiter;
        let mut field = 0;
        let mut start = 0;
        let mut i = 0;
        while i <= body.len() {
            if i == body.len() || body[i] == d {
                if field == self.key_index {
                    let raw = &body[start..i];
                    if raw == self.opts.null.as_slice() {
                        return Some(None);
                    }
                    return Some(Some(unescape_text(raw)));
                }
                field += 1;
                start = i + 1;
            } else if body[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        None
    }

    fn csv_key(&self, body: &[u8]) -> Option<Option<Vec<u8>>> {
        let (d, q, e) = (self.opts.delimiter, self.opts.quote, self.opts.escape);
        let mut field = 0;
        let mut i = 0;
        loop {
            let mut value = Vec::new();
            let mut quoted = false;
            let mut in_quote = false;
            while i < body.len() {
                let c = body[i];
                if in_quote {
                    if c == e && body.get(i + 1).is_some_and(|&n| n == q || n == e) && e != q
                        || c == q && e == q && body.get(i + 1) == Some(&q)
                    {
                        value.push(body[i + 1]);
                        i += 2;
                        continue;
                    }
                    if c == q {
                        in_quote = false;
                    } else {
                        value.push(c);
                    }
                } else if c == q {
                    in_quote = true;
                    quoted = true;
                } else if c == d {
                    break;
                } else {
                    value.push(c);
                }
                i += 1;
            }
            if field == self.key_index {
                let is_null =
                    !self.force_not_null && value == self.opts.null && (!quoted || self.force_null);
                return Some(if is_null { None } else { Some(value) });
            }
            if i >= body.len() {
                return None;
            }
            i += 1; // the delimiter
            field += 1;
        }
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Text-format escapes (`\t`, `\n`, octal, `\x` hex, `\c` = c).
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 >= raw.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = raw[i + 1];
        i += 2;
        match n {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(n - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(|h| h.is_ascii_hexdigit()) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|h| (*h as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn tables() -> Vec<ShardedTable> {
        vec![ShardedTable {
            schema: None,
            table: "orders".into(),
            column: "customer_id".into(),
            key_type: KeyType::Int8,
        }]
    }

    fn kind(sql: &str) -> Result<CopyKind, CopyError> {
        let s = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        classify(&s[0], &tables()).unwrap()
    }

    fn split(
        opts: Options,
        key: usize,
        chunks: &[&[u8]],
    ) -> Result<Vec<(Vec<u8>, OwnedKey)>, CopyError> {
        let mut s = RowSplitter::new(opts, key, "customer_id", KeyType::Int8, "orders", 1 << 20);
        let mut rows = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.feed(c, i + 1 == chunks.len(), &mut |r| {
                match r {
                    Row::Header(h) => rows.push((h.to_vec(), OwnedKey::Text(b"HEADER".to_vec()))),
                    Row::Data(d, k) => rows.push((d.to_vec(), k)),
                }
                Ok(())
            })?;
        }
        Ok(rows)
    }

    fn opts_of(sql: &str) -> Options {
        match kind(sql).unwrap() {
            CopyKind::FromStdin { options, .. } | CopyKind::ToStdout { options } => options,
        }
    }

    #[test]
    fn classifies_statements() {
        assert!(matches!(
            kind("COPY orders FROM STDIN"),
            Ok(CopyKind::FromStdin { table: Some(0), .. })
        ));
        assert!(matches!(
            kind("COPY other FROM STDIN"),
            Ok(CopyKind::FromStdin { table: None, .. })
        ));
        assert_eq!(kind("COPY orders FROM '/x'").unwrap_err().code, "0A000");
        assert_eq!(
            kind("COPY orders TO PROGRAM 'x'").unwrap_err().code,
            "0A000"
        );
        assert_eq!(
            kind("COPY orders (id) FROM STDIN").unwrap_err().code,
            "0A000"
        );
        assert_eq!(
            kind("COPY orders FROM STDIN (FORMAT binary)")
                .unwrap_err()
                .code,
            "0A000"
        );
        assert!(kind("COPY other FROM STDIN (FORMAT binary)").is_ok());
        let o = opts_of("COPY orders FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';')");
        assert_eq!(
            (o.format, o.delimiter, o.header, o.null.as_slice()),
            (Format::Csv, b';', true, &b""[..])
        );
        let o = opts_of("COPY orders FROM STDIN CSV HEADER QUOTE '''' DELIMITER '|'");
        assert_eq!(
            (o.format, o.delimiter, o.quote, o.escape),
            (Format::Csv, b'|', b'\'', b'\'')
        );
        let o = opts_of("COPY orders TO STDOUT");
        assert_eq!(
            (o.format, o.delimiter, o.null.as_slice()),
            (Format::Text, b'\t', &b"\\N"[..])
        );
    }

    #[test]
    fn text_rows_across_chunks() {
        let o = opts_of("COPY orders FROM STDIN");
        let rows = split(
            o.clone(),
            1,
            &[b"a\t1\tx\nb\t-2", b"2\ty\\\nz\n", b"c\t\\N\n", b"d\t 3 "],
        )
        .unwrap();
        let keys: Vec<&OwnedKey> = rows.iter().map(|r| &r.1).collect();
        assert_eq!(
            keys,
            [
                &OwnedKey::Int(1),
                &OwnedKey::Int(-22),
                &OwnedKey::Null,
                &OwnedKey::Int(3)
            ]
        );
        assert_eq!(rows[1].0, b"b\t-22\ty\\\nz\n");
        // Escapes in the key, CRLF split across messages, the end marker.
        let rows = split(o.clone(), 0, &[b"\\061\\x32\r", b"\n\\.\n9\n"]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0], (b"\\061\\x32\r\n".to_vec(), OwnedKey::Int(12)));
        let e = split(o.clone(), 1, &[b"x\tabc\n"]).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("22P02", "invalid input syntax for type bigint: \"abc\"")
        );
        assert_eq!(
            e.context.as_deref(),
            Some("COPY orders, line 1, column customer_id: \"abc\"")
        );
        assert_eq!(split(o.clone(), 2, &[b"1\t2\n"]).unwrap_err().code, "22P04");
        assert_eq!(
            split(o, 0, &[b"99999999999999999999\n"]).unwrap_err().code,
            "22003"
        );
    }

    #[test]
    fn csv_rows() {
        let o = opts_of("COPY orders FROM STDIN (FORMAT csv, HEADER)");
        let rows = split(o, 1, &[b"h1,h2\n\"a,\"\"b\nc\",\"7\"\n,", b"8\n,\n"]).unwrap();
        assert_eq!(rows[0].0, b"h1,h2\n");
        assert_eq!(
            rows[1],
            (b"\"a,\"\"b\nc\",\"7\"\n".to_vec(), OwnedKey::Int(7))
        );
        assert_eq!(rows[2].1, OwnedKey::Int(8));
        assert_eq!(rows.len(), 4);
        // An unquoted empty string is NULL; a quoted one is not (and not a bigint).
        assert_eq!(rows[3].1, OwnedKey::Null);
        let o = opts_of("COPY orders FROM STDIN (FORMAT csv)");
        assert_eq!(split(o, 1, &[b"x,\"\"\n"]).unwrap_err().code, "22P02");
    }
}
