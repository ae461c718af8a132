//! Statement normalization: one pass over the SQL text that replaces literal values with
//! placeholders, so statements that differ only in their literals share one cache key.
//!
//! Owns: [`normalize`] and the literal values it extracts (the tokens come from
//! `lexer.rs`). Must not: parse SQL grammar, allocate beyond the key, the literal list and
//! the literal values, do I/O, or panic on any input.
//!
//! The key keeps everything but literal values, comments and whitespace runs (collapsed to
//! one space). Literal `i` becomes `$N` with `N = LITERAL_PARAM_BASE + 1 + i`, so the key is
//! still SQL that sqlparser accepts (`Placeholder("$10001")`). Literals where a placeholder is
//! not valid SQL stay in the key: a string right after a type name (`DATE '2020-01-01'`,
//! `INTERVAL '1 day'`, `DO $$...$$`), type modifiers (`::numeric(10,2)`), every literal of a
//! `SET` statement, and `U&'...'` / `N'...'` strings.

use std::ops::Range;

use super::lexer::{is_ident_char, literal_value, Lexer, StrKind, Tok};

/// Placeholders for literals are numbered from `LITERAL_PARAM_BASE + 1`.
pub const LITERAL_PARAM_BASE: usize = 10000;

/// A statement with its literals replaced by placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Normalized {
    /// The normalized text (cache key); valid SQL with `$10001`... for literals.
    pub key: String,
    /// Literal `i` is `$(LITERAL_PARAM_BASE + 1 + i)` in `key`.
    pub literals: Vec<Literal>,
}

/// One literal replaced in the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    /// Byte range of the literal in the original SQL (including quotes and prefixes).
    pub range: Range<usize>,
    pub value: LiteralValue,
}

/// The value of a literal: strings unescaped, numbers as written.
/// Bit strings (`B'0101'`, `X'1F'`) are `Str` of the digits; `range` has the exact text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiteralValue {
    Str(String),
    Num(String),
}

impl Normalized {
    /// The literal behind placeholder `$n`, if `n` is one of ours.
    pub fn literal_for_param(&self, n: usize) -> Option<&Literal> {
        n.checked_sub(LITERAL_PARAM_BASE + 1)
            .and_then(|i| self.literals.get(i))
    }
}

/// Words after which a string literal is in expression position (so replaceable).
/// After any other word (`DATE`, `INTERVAL`, `DO`, a type name...) the literal is kept.
fn word_allows_literal(w: &[u8]) -> bool {
    #[rustfmt::skip]
    const WORDS: &[&[u8]] = &[
        b"select", b"where", b"and", b"or", b"not", b"in", b"then", b"else", b"when", b"case",
        b"like", b"ilike", b"similar", b"to", b"is", b"from", b"between", b"symmetric",
        b"values", b"returning", b"having", b"on", b"by", b"limit", b"offset", b"escape",
        b"distinct", b"all", b"any", b"some", b"exists", b"return", b"overlaps", b"row",
    ];
    WORDS.iter().any(|k| k.eq_ignore_ascii_case(w))
}

/// `$n` without going through `fmt`.
fn push_placeholder(key: &mut String, mut n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    key.push('$');
    for &d in &buf[i..] {
        key.push(d as char);
    }
}

/// Whether the next non-blank byte from `i` on is `(`.
fn next_is_paren(bytes: &[u8], i: usize) -> bool {
    bytes
        .get(i..)
        .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()))
        == Some(&b'(')
}

/// Type names that take modifiers (`varchar(20)`, `numeric(10,2)`) even outside casts, as in
/// column definitions.
fn is_typmod_type(w: &str) -> bool {
    #[rustfmt::skip]
    const TYPES: &[&str] = &[
        "varchar", "char", "character", "nchar", "numeric", "decimal", "bit", "varbit",
        "timestamp", "timestamptz", "time", "timetz", "interval", "float",
    ];
    TYPES.iter().any(|t| t.eq_ignore_ascii_case(w))
}

/// Type-cast tracking for `::type(mods)` / `AS type(mods)`: literals in mods are kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cast {
    None,
    After,
    InType,
}

/// Normalize `sql` into a cache key plus its literals. Never fails; unterminated
/// strings/comments simply run to the end of the input.
pub fn normalize(sql: &str) -> Normalized {
    let mut key = String::with_capacity(sql.len() + 32);
    let mut literals: Vec<Literal> = Vec::new();
    let bytes = sql.as_bytes();
    // Verbatim tokens separated by single spaces are copied as one run of the input.
    let mut run = 0..0;
    let mut pending_space = false;
    let mut simple_space = false; // the pending separator is exactly one ' '
    let mut after_placeholder = false;
    let mut prev_word: Option<Range<usize>> = None; // previous significant token, if a word
    let mut stmt_start = true;
    let mut in_set = false;
    let mut cast = Cast::None;
    let mut typmod_depth = 0usize;

    for (tok, r) in Lexer::new(sql) {
        if matches!(tok, Tok::Space | Tok::Comment) {
            let started = !key.is_empty() || !run.is_empty();
            simple_space = started
                && !pending_space
                && tok == Tok::Space
                && r.len() == 1
                && bytes.get(r.start) == Some(&b' ');
            pending_space = started;
            continue;
        }
        let text = sql.get(r.clone()).unwrap_or("");
        let replace = match tok {
            Tok::Str(StrKind::Opaque) => false,
            Tok::Str(_) => {
                let after_type = prev_word
                    .as_ref()
                    .and_then(|w| bytes.get(w.clone()))
                    .is_some_and(|w| !word_allows_literal(w));
                !in_set && typmod_depth == 0 && !after_type
            }
            Tok::Num => !in_set && typmod_depth == 0,
            _ => false,
        };
        let contiguous = !run.is_empty()
            && if pending_space {
                simple_space && run.end + 1 == r.start
            } else {
                run.end == r.start
            };
        if !replace && contiguous {
            run.end = r.end;
        } else {
            key.push_str(sql.get(run.clone()).unwrap_or(""));
            run = 0..0;
            let first = bytes.get(r.start).copied().unwrap_or(b' ');
            if pending_space || (after_placeholder && is_ident_char(first)) {
                key.push(' ');
            }
            if replace {
                if key.as_bytes().last().is_some_and(|&b| is_ident_char(b)) {
                    key.push(' ');
                }
                push_placeholder(&mut key, LITERAL_PARAM_BASE + 1 + literals.len());
                literals.push(Literal {
                    range: r.clone(),
                    value: literal_value(tok, text),
                });
            } else {
                run = r.clone();
            }
        }
        after_placeholder = replace;
        pending_space = false;
        simple_space = false;

        // State for the next token.
        let is_word = tok == Tok::Word;
        if stmt_start && (is_word || tok == Tok::QuotedIdent) {
            in_set = is_word && text.eq_ignore_ascii_case("set");
            stmt_start = false;
        }
        match tok {
            Tok::Op if text == ";" => {
                stmt_start = true;
                in_set = false;
                typmod_depth = 0;
                cast = Cast::None;
            }
            Tok::Op if text == "(" => {
                if typmod_depth > 0 {
                    typmod_depth += 1;
                } else if cast == Cast::InType {
                    typmod_depth = 1;
                }
                cast = Cast::None;
            }
            Tok::Op if text == ")" => {
                typmod_depth = typmod_depth.saturating_sub(1);
                cast = Cast::None;
            }
            Tok::Op if text == "::" => cast = Cast::After,
            Tok::Word if text.eq_ignore_ascii_case("as") => cast = Cast::After,
            Tok::QuotedIdent if cast == Cast::After => cast = Cast::InType,
            Tok::Word if cast == Cast::After => {
                const NOT_TYPES: &[&str] =
                    &["materialized", "not", "select", "values", "with", "table"];
                let query = NOT_TYPES.iter().any(|w| text.eq_ignore_ascii_case(w));
                cast = if query { Cast::None } else { Cast::InType };
            }
            Tok::Word
                if cast == Cast::None && next_is_paren(bytes, r.end) && is_typmod_type(text) =>
            {
                cast = Cast::InType
            }
            Tok::Word if cast == Cast::InType => {
                const MORE: &[&str] = &["precision", "varying", "with", "without", "time", "zone"];
                if !MORE.iter().any(|w| text.eq_ignore_ascii_case(w)) {
                    cast = Cast::None;
                }
            }
            _ => cast = Cast::None,
        }
        prev_word = if is_word || tok == Tok::QuotedIdent {
            Some(r)
        } else {
            None
        };
    }
    key.push_str(sql.get(run).unwrap_or(""));
    Normalized { key, literals }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        normalize(sql).key
    }

    fn values(sql: &str) -> Vec<LiteralValue> {
        normalize(sql)
            .literals
            .into_iter()
            .map(|l| l.value)
            .collect()
    }

    fn s(v: &str) -> LiteralValue {
        LiteralValue::Str(v.to_string())
    }

    fn n(v: &str) -> LiteralValue {
        LiteralValue::Num(v.to_string())
    }

    /// Put the original literal texts back in place of the placeholders.
    fn substitute(sql: &str, norm: &Normalized) -> String {
        let mut out = String::new();
        let mut rest = norm.key.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let digits = rest[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
            let lit = rest[i + 1..i + 1 + digits]
                .parse()
                .ok()
                .and_then(|p| norm.literal_for_param(p));
            match lit {
                Some(l) => out.push_str(&sql[l.range.clone()]),
                None => out.push_str(&rest[i..i + 1 + digits]),
            }
            rest = &rest[i + 1 + digits..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn same_shape_same_key() {
        let a = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 42");
        let b = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 7");
        assert_eq!(a.key, b.key);
        assert_eq!(
            a.key,
            "SELECT abalance FROM pgbench_accounts WHERE aid = $10001"
        );
        assert_eq!(a.literals[0].value, n("42"));
        assert_eq!(a.literals[0].range, 50..52);
        assert_eq!(b.literals[0].value, n("7"));
        assert_eq!(
            key("SELECT * FROM t WHERE a = 'x' AND b IN (1, 2.5)"),
            key("select * from t where a = 'it''s' and b in (3, 4e10)")
                .replace("select", "SELECT")
                .replace("from", "FROM")
                .replace("where", "WHERE")
                .replace("and", "AND")
                .replace("in (", "IN (")
        );
        assert_eq!(key("SELECT  1\n\t,\r\n 2  "), key("SELECT 3 , 4"));
        assert_eq!(key("SELECT 1 /* c */ -- x\n"), key("SELECT 2"));
    }

    #[test]
    fn different_shapes_different_keys() {
        let shapes = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "SELECT abalance FROM pgbench_accounts WHERE bid = 42",
            "SELECT abalance FROM pgbench_accounts WHERE aid > 42",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42 FOR UPDATE",
            "SELECT abalance FROM pgbench_accounts WHERE \"aid\" = 42",
            "SELECT abalance FROM pgbench_accounts WHERE aid = DATE '2020-01-01'",
            "SELECT abalance FROM pgbench_accounts WHERE aid = DATE '2020-01-02'",
            "SELECT abalance FROM pgbench_accounts WHERE aid = -42",
            "SELECT abalance FROM pgbench_accounts WHERE aid IN (42, 43)",
        ];
        let keys: Vec<String> = shapes.iter().map(|s| key(s)).collect();
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{} vs {}", shapes[i], shapes[j]);
            }
        }
    }

    #[test]
    fn literal_kinds() {
        assert_eq!(values("SELECT 'it''s'"), [s("it's")]);
        assert_eq!(
            values(r"SELECT E'a\nb\x41\101\u00e9\'q''', e'\\'"),
            [s("a\nbAAé'q'"), s("\\")]
        );
        assert_eq!(
            values("SELECT $$x'y$$, $tag$ a $$ b $tag$"),
            [s("x'y"), s(" a $$ b ")]
        );
        assert_eq!(
            values("SELECT 42, 1.5e3, .5, 5., 1e-3, 0x1F, 0o17, 0b101, 1_000"),
            ["42", "1.5e3", ".5", "5.", "1e-3", "0x1F", "0o17", "0b101", "1_000"].map(n)
        );
        assert_eq!(values("SELECT B'0101', X'1F'"), [s("0101"), s("1F")]);
        let neg = normalize("SELECT -1, 2-3");
        assert_eq!(neg.key, "SELECT -$10001, $10002-$10003");
        assert_eq!(neg.literals[0].value, n("1"));
        // unterminated input runs to the end
        assert_eq!(values("SELECT 'abc"), [s("abc")]);
        assert_eq!(values("SELECT $$abc"), [s("abc")]);
        assert_eq!(values("SELECT E'ab\\"), [s("ab\\")]);
    }

    #[test]
    fn comments_stripped_quoted_identifiers_kept() {
        assert_eq!(
            key("/* pgvane: primary */ SELECT /* a /* nested */ b */ \"x\"\"y\", 1 -- tail"),
            "SELECT \"x\"\"y\", $10001"
        );
        assert_eq!(key("-- pgvane: replica\nSELECT 1"), "SELECT $10001");
        assert_eq!(key("SELECT/**/1"), "SELECT $10001");
        assert_eq!(
            key("SELECT a FROM \"My Table\" WHERE \"b--\" = 1"),
            "SELECT a FROM \"My Table\" WHERE \"b--\" = $10001"
        );
    }

    #[test]
    fn strings_that_look_like_syntax() {
        let norm = normalize("SELECT '--x', '/* y */', '$1', $1, 'a;b'; SELECT 2");
        assert_eq!(
            norm.key,
            "SELECT $10001, $10002, $10003, $1, $10004; SELECT $10005"
        );
        assert_eq!(
            norm.literals
                .iter()
                .map(|l| l.value.clone())
                .collect::<Vec<_>>(),
            [s("--x"), s("/* y */"), s("$1"), s("a;b"), n("2")]
        );
        assert_eq!(key("SELECT $q$ -- $$ /* $q$"), "SELECT $10001");
    }

    #[test]
    fn literals_kept_where_placeholders_are_invalid() {
        assert_eq!(key("SELECT DATE '2020-01-01'"), "SELECT DATE '2020-01-01'");
        assert_eq!(
            key("SELECT now() - INTERVAL '1 day'"),
            "SELECT now() - INTERVAL '1 day'"
        );
        assert_eq!(
            key("SELECT TIMESTAMPTZ 'x', jsonb '{}', uuid 'u'"),
            "SELECT TIMESTAMPTZ 'x', jsonb '{}', uuid 'u'"
        );
        assert_eq!(
            key("SELECT x::numeric(10, 2), 5"),
            "SELECT x::numeric(10, 2), $10001"
        );
        assert_eq!(
            key("CREATE TABLE t (a varchar(20), b numeric(10,2) DEFAULT 0)"),
            "CREATE TABLE t (a varchar(20), b numeric(10,2) DEFAULT $10001)"
        );
        assert_eq!(
            key("SELECT CAST(x AS varchar(20)) FROM t WHERE y = 3"),
            "SELECT CAST(x AS varchar(20)) FROM t WHERE y = $10001"
        );
        assert_eq!(
            key("SET statement_timeout = 5"),
            "SET statement_timeout = 5"
        );
        assert_eq!(
            key("SET x TO 'y'; SELECT 'z'"),
            "SET x TO 'y'; SELECT $10001"
        );
        assert_eq!(key("DO $$ BEGIN END $$"), "DO $$ BEGIN END $$");
        assert_eq!(
            key("SELECT U&'d\\0061t', N'x'"),
            "SELECT U&'d\\0061t', N'x'"
        );
        // an alias is not a type: literals after it are replaced
        assert_eq!(
            key("SELECT count(*) AS c FROM t WHERE f(1) = 2"),
            "SELECT count(*) AS c FROM t WHERE f($10001) = $10002"
        );
        assert_eq!(
            key("WITH x AS MATERIALIZED (SELECT 1) SELECT 2"),
            "WITH x AS MATERIALIZED (SELECT $10001) SELECT $10002"
        );
    }

    #[test]
    fn placeholders_never_merge_with_words() {
        assert_eq!(key("select'a'"), "select $10001");
        assert_eq!(key("SELECT 1as x"), "SELECT $10001 as x");
        assert_eq!(key("SELECT 1e"), "SELECT $10001 e");
    }

    #[test]
    fn round_trip() {
        let statements = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "select * from t where a = 'it''s' and b in (1, 2.5, -3) limit 10 offset 5",
            "INSERT INTO t (a, b, c) VALUES (1, E'x\\ny', $$dollar$$), (2, 'q', .5)",
            "UPDATE t SET a = a + 1.5e3 WHERE b = 'x' RETURNING *",
            "SELECT DATE '2020-01-01' + 3, x::numeric(10,2) FROM t WHERE c LIKE 'a%' ESCAPE '!'",
            "SELECT CASE WHEN a = 1 THEN 'one' ELSE 'other' END FROM t",
            "SELECT * FROM t WHERE a BETWEEN 1 AND 10 OR b IS NOT DISTINCT FROM 'z'",
        ];
        for sql in statements {
            let norm = normalize(sql);
            let back = substitute(sql, &norm);
            assert_eq!(normalize(&back), norm, "{sql}");
            let dialect = sqlparser::dialect::PostgreSqlDialect {};
            let parse = |s: &str| {
                sqlparser::parser::Parser::parse_sql(&dialect, s)
                    .map(|v| v.iter().map(|st| st.to_string()).collect::<Vec<_>>())
            };
            assert_eq!(parse(&back).ok(), parse(sql).ok(), "{sql}");
            assert!(parse(sql).is_ok(), "{sql}");
            assert!(
                parse(&norm.key).is_ok(),
                "normalized form must parse: {}",
                norm.key
            );
        }
    }

    #[test]
    fn literal_for_param() {
        let norm = normalize("SELECT 1, 'a'");
        assert_eq!(
            norm.literal_for_param(10001).map(|l| &l.value),
            Some(&n("1"))
        );
        assert_eq!(
            norm.literal_for_param(10002).map(|l| &l.value),
            Some(&s("a"))
        );
        assert!(norm.literal_for_param(10003).is_none());
        assert!(norm.literal_for_param(1).is_none());
    }
}
