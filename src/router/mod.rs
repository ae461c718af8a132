//! Statement analysis for read/write routing: pure functions from SQL text to a verdict.
//!
//! Owns: the lexer (`lexer`), normalization (`normalize`), classification (`classify`,
//! with its AST walk in `scan` and the keyword-level fallback in `fallback`), routing hints
//! in comments (`hints`), the analysis cache (`cache`), the function-volatility catalog
//! (`functions`, the only part that does I/O, through a client the caller passes in), and
//! recognition of the commands pgvane answers itself ([`pgvane_command`]).
//! Must not: touch sockets, pools or session state; the session decides what to do with
//! a verdict.
//!
//! Typical use per statement:
//! ```ignore
//! let hints = parse_hints(sql);                       // allocation-free without comments
//! if let Some(cmd) = pgvane_command(sql) { ... }      // SET pgvane.route = ..., EXPLAIN ROUTE
//! let (analysis, normalized) = cache.get_or_analyze(sql, &config.write_functions);
//! let (write, reason) = if analysis.functions.is_empty() { (analysis.write, analysis.reason.clone()) }
//!     else { analysis.with_volatile(&catalog.volatile_functions(&analysis.functions, &client).await) };
//! ```

pub mod cache;
pub mod classify;
pub mod database_ddl;
mod fallback;
pub mod functions;
pub mod hints;
mod lexer;
pub mod normalize;
mod scan;

pub use cache::AnalysisCache;
pub use classify::{analyze, Analysis, Reason, StatementKind};
pub use database_ddl::databases_needing_no_sessions;
pub use functions::FunctionCatalog;
pub use hints::{parse_duration, parse_hints, Hints, RouteHint};
pub use normalize::{normalize, Literal, LiteralValue, Normalized, LITERAL_PARAM_BASE};

use std::fmt;

/// Value of `SET pgvane.route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteSetting {
    Primary,
    Replica,
    /// Route by statement analysis (the default).
    #[default]
    Auto,
}

impl RouteSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSetting::Primary => "primary",
            RouteSetting::Replica => "replica",
            RouteSetting::Auto => "auto",
        }
    }
}

impl fmt::Display for RouteSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command pgvane answers itself instead of sending it to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgvaneCommand {
    /// `SET pgvane.route = 'primary' | 'replica' | 'auto'` (also `TO`).
    SetRoute(RouteSetting),
    /// `SHOW pgvane.route`
    ShowRoute,
    /// `SET pgvane.min_lsn = '16/B374D848'` (validated, upper-cased).
    SetMinLsn(String),
    /// `SHOW pgvane.last_write_lsn`
    ShowLastWriteLsn,
    /// `SET pgvane.shard = 2`
    SetShard(u32),
    /// `SET pgvane.sharding_key = '42'`
    SetShardingKey(String),
    /// `RESET pgvane.<name>` or `SET pgvane.<name> TO DEFAULT`; name is one of
    /// `route`, `min_lsn`, `shard`, `sharding_key` (lower-case, without `pgvane.`).
    Reset(String),
    /// `SHOW pgvane.<name>` for `min_lsn`, `shard`, `sharding_key`.
    Show(String),
    /// `EXPLAIN ROUTE <statement>`: the inner statement text.
    ExplainRoute(String),
}

const SETTINGS: &[&str] = &["route", "min_lsn", "shard", "sharding_key"];

/// Skip whitespace and leading comments.
fn skip_noise(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i..]);
        } else if s.starts_with("/*") {
            let mut depth = 0usize;
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            s = s.get(i.min(b.len())..).unwrap_or("");
        } else {
            return s;
        }
    }
}

/// Split off a leading word of `[A-Za-z0-9_.]` characters.
fn word(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Parse a single value: `'quoted ''text'''` or a bare token; trailing `;` allowed.
fn value(s: &str) -> Result<(String, bool), String> {
    let s = s.trim();
    let s = s.strip_suffix(';').unwrap_or(s).trim_end();
    if let Some(body) = s.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\'' {
                out.push(c);
            } else if chars.peek().map(|&(_, n)| n) == Some('\'') {
                chars.next();
                out.push('\'');
            } else if body[i + 1..].trim().is_empty() {
                return Ok((out, true));
            } else {
                return Err(format!(
                    "syntax error at or near \"{}\"",
                    body[i + 1..].trim()
                ));
            }
        }
        return Err("unterminated quoted string".into());
    }
    if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == ',' || c == ';') {
        return Err(format!("syntax error: expected one value, got \"{s}\""));
    }
    Ok((s.to_owned(), false))
}

fn valid_lsn(s: &str) -> bool {
    let hex = |p: &str| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(s.split_once('/'), Some((a, b)) if hex(a) && hex(b))
}

/// Recognise a pgvane command with a cheap prefix check: `None` for ordinary SQL,
/// `Some(Err(message))` for a pgvane command with a bad value or unknown setting (reply
/// SQLSTATE 22023, or 42704 for an unknown name).
pub fn pgvane_command(sql: &str) -> Option<Result<PgvaneCommand, String>> {
    let s = skip_noise(sql);
    if !matches!(
        s.as_bytes().first()?,
        b's' | b'S' | b'r' | b'R' | b'e' | b'E'
    ) {
        return None;
    }
    let (verb, rest) = word(s);
    let rest = skip_noise(rest);
    if verb.eq_ignore_ascii_case("explain") {
        let (w, inner) = word(rest);
        if !w.eq_ignore_ascii_case("route")
            || !(inner.is_empty()
                || inner.starts_with(char::is_whitespace)
                || inner.starts_with("/*"))
        {
            return None;
        }
        let inner = inner.trim();
        if inner.is_empty() {
            return Some(Err("EXPLAIN ROUTE needs a statement".into()));
        }
        return Some(Ok(PgvaneCommand::ExplainRoute(inner.to_owned())));
    }
    let is_set = verb.eq_ignore_ascii_case("set");
    if !(is_set || verb.eq_ignore_ascii_case("show") || verb.eq_ignore_ascii_case("reset")) {
        return None;
    }
    let (mut name, mut rest) = word(rest);
    let mut local = false;
    if is_set && (name.eq_ignore_ascii_case("session") || name.eq_ignore_ascii_case("local")) {
        local = name.eq_ignore_ascii_case("local");
        (name, rest) = word(rest.trim_start());
    }
    let setting = match name.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("pgvane.") => name[7..].to_ascii_lowercase(),
        _ => return None,
    };
    Some(command(verb, &setting, rest, local))
}

fn command(verb: &str, setting: &str, rest: &str, local: bool) -> Result<PgvaneCommand, String> {
    let known = SETTINGS.contains(&setting) || setting == "last_write_lsn";
    if !known {
        return Err(format!(
            "unrecognized configuration parameter \"pgvane.{setting}\" (pgvane settings: route, \
             min_lsn, shard, sharding_key, last_write_lsn)"
        ));
    }
    let tail = rest.trim();
    let tail = tail.strip_suffix(';').unwrap_or(tail).trim();
    if !verb.eq_ignore_ascii_case("set") {
        if !tail.is_empty() {
            return Err(format!("syntax error at or near \"{tail}\""));
        }
        let show = verb.eq_ignore_ascii_case("show");
        return Ok(match setting {
            "route" if show => PgvaneCommand::ShowRoute,
            "last_write_lsn" if show => PgvaneCommand::ShowLastWriteLsn,
            "last_write_lsn" => return Err(read_only(setting)),
            _ if show => PgvaneCommand::Show(setting.to_owned()),
            _ => PgvaneCommand::Reset(setting.to_owned()),
        });
    }
    if setting == "last_write_lsn" {
        return Err(read_only(setting));
    }
    if local {
        return Err(format!("SET LOCAL is not supported for pgvane.{setting}"));
    }
    let rhs = if let Some(r) = tail.strip_prefix('=') {
        r
    } else {
        match word(tail) {
            (to, r) if to.eq_ignore_ascii_case("to") => r,
            _ => {
                return Err(format!(
                    "syntax error: expected = or TO after pgvane.{setting}"
                ))
            }
        }
    };
    let (v, quoted) = value(rhs)?;
    if !quoted && v.eq_ignore_ascii_case("default") {
        return Ok(PgvaneCommand::Reset(setting.to_owned()));
    }
    let bad = |expected: &str| {
        format!("invalid value for parameter \"pgvane.{setting}\": \"{v}\" ({expected})")
    };
    match setting {
        "route" => match v.to_ascii_lowercase().as_str() {
            "primary" => Ok(PgvaneCommand::SetRoute(RouteSetting::Primary)),
            "replica" => Ok(PgvaneCommand::SetRoute(RouteSetting::Replica)),
            "auto" => Ok(PgvaneCommand::SetRoute(RouteSetting::Auto)),
            _ => Err(bad("allowed values: primary, replica, auto")),
        },
        "min_lsn" if valid_lsn(&v) => Ok(PgvaneCommand::SetMinLsn(v.to_ascii_uppercase())),
        "min_lsn" => Err(bad("expected an LSN such as 16/B374D848")),
        "shard" => v
            .parse::<u32>()
            .map(PgvaneCommand::SetShard)
            .map_err(|_| bad("expected a shard number")),
        _ => Ok(PgvaneCommand::SetShardingKey(v)),
    }
}

fn read_only(setting: &str) -> String {
    format!("parameter \"pgvane.{setting}\" cannot be changed")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod command_tests {
    use super::*;
    use PgvaneCommand as C;

    fn ok(sql: &str) -> PgvaneCommand {
        match pgvane_command(sql) {
            Some(Ok(c)) => c,
            other => panic!("{sql:?}: {other:?}"),
        }
    }

    fn err(sql: &str) -> String {
        match pgvane_command(sql) {
            Some(Err(e)) => e,
            other => panic!("{sql:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn route() {
        assert_eq!(
            ok("SET pgvane.route = 'primary'"),
            C::SetRoute(RouteSetting::Primary)
        );
        assert_eq!(
            ok("set PGVANE.ROUTE to replica;"),
            C::SetRoute(RouteSetting::Replica)
        );
        assert_eq!(
            ok("  SET   pgvane.route\n=\t'AUTO' ; "),
            C::SetRoute(RouteSetting::Auto)
        );
        assert_eq!(
            ok("SET SESSION pgvane.route TO 'replica'"),
            C::SetRoute(RouteSetting::Replica)
        );
        assert_eq!(
            ok("/* pgvane: primary */ SET pgvane.route = primary"),
            C::SetRoute(RouteSetting::Primary)
        );
        assert_eq!(ok("SET pgvane.route TO DEFAULT"), C::Reset("route".into()));
        assert_eq!(ok("SHOW pgvane.route"), C::ShowRoute);
        assert_eq!(ok("show pgvane.route;"), C::ShowRoute);
        assert_eq!(ok("RESET pgvane.route"), C::Reset("route".into()));
        let e = err("SET pgvane.route = 'sideways'");
        assert!(
            e.contains("sideways") && e.contains("primary, replica, auto"),
            "{e}"
        );
        assert!(err("SET pgvane.route = 'primary' 'x'").contains("syntax"));
        assert!(err("SET pgvane.route = primary, replica").contains("syntax"));
        assert!(err("SET pgvane.route primary").contains("TO"));
        assert!(err("SET LOCAL pgvane.route = primary").contains("LOCAL"));
        assert!(err("SET pgvane.route = 'primary").contains("unterminated"));
        assert!(err("SHOW pgvane.route extra").contains("syntax"));
    }

    #[test]
    fn lsn_shard_key() {
        assert_eq!(
            ok("SET pgvane.min_lsn = '16/b374d848'"),
            C::SetMinLsn("16/B374D848".into())
        );
        assert!(err("SET pgvane.min_lsn = 'nope'").contains("LSN"));
        assert!(err("SET pgvane.min_lsn = '1/123456789'").contains("LSN"));
        assert_eq!(ok("SHOW pgvane.last_write_lsn"), C::ShowLastWriteLsn);
        assert!(err("SET pgvane.last_write_lsn = '0/1'").contains("cannot be changed"));
        assert_eq!(ok("SET pgvane.shard = 2"), C::SetShard(2));
        assert_eq!(ok("SET pgvane.shard TO '3'"), C::SetShard(3));
        assert!(err("SET pgvane.shard = -1").contains("shard number"));
        assert!(err("SET pgvane.shard = 'two'").contains("shard number"));
        assert_eq!(
            ok("SET pgvane.sharding_key = '42'"),
            C::SetShardingKey("42".into())
        );
        assert_eq!(
            ok("SET pgvane.sharding_key = 'it''s'"),
            C::SetShardingKey("it's".into())
        );
        assert_eq!(
            ok("SET pgvane.sharding_key = 42"),
            C::SetShardingKey("42".into())
        );
        assert_eq!(ok("RESET pgvane.shard"), C::Reset("shard".into()));
        assert_eq!(
            ok("RESET pgvane.sharding_key;"),
            C::Reset("sharding_key".into())
        );
        assert_eq!(ok("SHOW pgvane.shard"), C::Show("shard".into()));
        assert_eq!(ok("SHOW pgvane.min_lsn"), C::Show("min_lsn".into()));
        assert!(err("SET pgvane.colour = 'blue'").contains("unrecognized"));
        assert!(err("SHOW pgvane.colour").contains("unrecognized"));
    }

    #[test]
    fn explain_route() {
        assert_eq!(
            ok("EXPLAIN ROUTE SELECT 1"),
            C::ExplainRoute("SELECT 1".into())
        );
        assert_eq!(
            ok("explain  route\n  /* pgvane: primary */ SELECT * FROM t;"),
            C::ExplainRoute("/* pgvane: primary */ SELECT * FROM t;".into())
        );
        assert!(err("EXPLAIN ROUTE  ").contains("needs a statement"));
    }

    #[test]
    fn ordinary_sql_is_not_a_command() {
        for sql in [
            "SELECT 1",
            "SET search_path = public",
            "SHOW search_path",
            "RESET ALL",
            "EXPLAIN SELECT 1",
            "EXPLAIN ROUTES",
            "EXPLAIN routex SELECT 1",
            "SET pgvanex.route = 'primary'",
            "SET \"pgvane\".route = 'primary'",
            "update t set a = 1",
            "",
            "   ",
            "/* unterminated",
        ] {
            assert_eq!(pgvane_command(sql), None, "{sql:?}");
        }
    }
}
