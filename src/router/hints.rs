//! Routing hints in leading SQL comments: `/* pgvane: primary */`, `-- pgvane: replica`,
//! `/* pgvane: replica, max_lag=100ms */`, `/* pgvane: shard=2 */`,
//! `/* pgvane: sharding_key=42 */`.
//!
//! Owns: reading hints from the comments that precede the statement (several comments and
//! several comma- or space-separated hints per comment), and the tiny duration parser.
//! Must not: look past the first token that is not a comment, do I/O, or panic. Unknown
//! keys are ignored (logged at debug level).

use std::time::Duration;

/// Forced route for one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteHint {
    Primary,
    Replica,
}

/// Hints found in the leading comments of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hints {
    /// `primary` / `replica`; if both appear, `primary` wins.
    pub route: Option<RouteHint>,
    /// `max_lag=100ms`: tighter staleness bound (the smallest one given wins).
    pub max_lag: Option<Duration>,
    /// `shard=2`
    pub shard: Option<u32>,
    /// `sharding_key=42` or `sharding_key='abc'`
    pub sharding_key: Option<String>,
}

impl Hints {
    /// True when no hint was given.
    pub fn is_empty(&self) -> bool {
        self.route.is_none()
            && self.max_lag.is_none()
            && self.shard.is_none()
            && self.sharding_key.is_none()
    }
}

/// Parse `100ms`, `2s`, `1.5s`, `3m` (also `us`/`h`). No unit or anything else: `None`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "us" => value / 1_000_000.0,
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Read hints from the comments at the start of `sql`. Allocation-free when `sql` does not
/// start (after whitespace) with a comment.
pub fn parse_hints(sql: &str) -> Hints {
    let mut hints = Hints::default();
    let mut rest = sql.trim_start();
    loop {
        let body;
        if let Some(after) = rest.strip_prefix("--") {
            let end = after.find(['\n', '\r']).unwrap_or(after.len());
            body = &after[..end];
            rest = &after[end..];
        } else if rest.starts_with("/*") {
            let (end, closed) = block_comment_end(rest);
            let body_end = if closed { end - 2 } else { end };
            body = rest.get(2..body_end.max(2)).unwrap_or("");
            rest = rest.get(end..).unwrap_or("");
        } else {
            return hints;
        }
        apply_comment(body, &mut hints);
        rest = rest.trim_start();
    }
}

/// Byte index just past the (nested) block comment at the start of `s`, and whether it
/// was closed.
fn block_comment_end(s: &str) -> (usize, bool) {
    let b = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return (i, true);
            }
        } else {
            i += 1;
        }
    }
    (b.len(), false)
}

/// Apply the hints of one comment body (without `/*` `*/` or `--`) if it is a pgvane hint.
fn apply_comment(body: &str, hints: &mut Hints) {
    let body = body.trim();
    let Some(prefix) = body.get(..7) else { return };
    if !prefix.eq_ignore_ascii_case("pgvane:") {
        return;
    }
    let mut items = HintItems {
        s: body.get(7..).unwrap_or(""),
    };
    while let Some((key, value)) = items.next_item() {
        apply_item(key, value.as_deref(), hints);
    }
}

fn apply_item(key: &str, value: Option<&str>, hints: &mut Hints) {
    let key_is = |k: &str| key.eq_ignore_ascii_case(k);
    match value {
        None if key_is("primary") => hints.route = Some(RouteHint::Primary),
        None if key_is("replica") || key_is("standby") => {
            if hints.route != Some(RouteHint::Primary) {
                hints.route = Some(RouteHint::Replica);
            }
        }
        Some(v) if key_is("route") => match v.to_ascii_lowercase().as_str() {
            "primary" => hints.route = Some(RouteHint::Primary),
            "replica" if hints.route != Some(RouteHint::Primary) => {
                hints.route = Some(RouteHint::Replica)
            }
            "replica" => {}
            _ => tracing::debug!(value = v, "pgvane hint: bad route value ignored"),
        },
        Some(v) if key_is("max_lag") => match parse_duration(v) {
            Some(d) => hints.max_lag = Some(hints.max_lag.map_or(d, |old| old.min(d))),
            None => tracing::debug!(value = v, "pgvane hint: bad max_lag ignored"),
        },
        Some(v) if key_is("shard") => match v.parse::<u32>() {
            Ok(n) => hints.shard = Some(n),
            Err(_) => tracing::debug!(value = v, "pgvane hint: bad shard ignored"),
        },
        Some(v) if key_is("sharding_key") => hints.sharding_key = Some(v.to_owned()),
        _ => tracing::debug!(key, ?value, "pgvane hint: unknown hint ignored"),
    }
}

/// Iterator over `key` / `key=value` / `key = 'quoted value'` items separated by commas
/// or whitespace.
struct HintItems<'a> {
    s: &'a str,
}

impl<'a> HintItems<'a> {
    fn skip_separators(&mut self) {
        self.s = self
            .s
            .trim_start_matches(|c: char| c == ',' || c == ';' || c.is_whitespace());
    }

    fn word(&mut self) -> &'a str {
        let end = self
            .s
            .find(|c: char| c == ',' || c == '=' || c == ';' || c.is_whitespace())
            .unwrap_or(self.s.len());
        let (w, rest) = self.s.split_at(end);
        self.s = rest;
        w
    }

    /// A value: `'quoted ''text'''`, `"quoted"`, or a bare word.
    fn value(&mut self) -> Option<String> {
        let q = self.s.chars().next()?;
        if q != '\'' && q != '"' {
            let w = self.word();
            return (!w.is_empty()).then(|| w.to_owned());
        }
        let mut out = String::new();
        let mut chars = self.s[1..].char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == q {
                if chars.peek().map(|&(_, n)| n) == Some(q) {
                    chars.next();
                    out.push(q);
                } else {
                    self.s = &self.s[1 + i + 1..];
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        self.s = "";
        Some(out)
    }

    fn next_item(&mut self) -> Option<(&'a str, Option<String>)> {
        loop {
            self.skip_separators();
            if self.s.is_empty() {
                return None;
            }
            let key = self.word();
            if key.is_empty() {
                // A stray '=' without a key: skip it.
                self.s = self.s.get(1..).unwrap_or("");
                continue;
            }
            let after = self.s.trim_start();
            if let Some(v) = after.strip_prefix('=') {
                self.s = v.trim_start();
                return Some((key, self.value()));
            }
            return Some((key, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("0ms"), Some(Duration::ZERO));
        assert_eq!(parse_duration("100"), None);
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1e400s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn no_comment_is_empty() {
        assert!(parse_hints("SELECT 1").is_empty());
        assert!(parse_hints("  select /* pgvane: primary */ 1").is_empty());
        assert!(parse_hints("").is_empty());
    }

    #[test]
    fn route_hints() {
        let h = parse_hints("/* pgvane: primary */ SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Primary));
        let h = parse_hints("  /*pgvane:replica*/SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Replica));
        let h = parse_hints("-- pgvane: primary\nSELECT 1");
        assert_eq!(h.route, Some(RouteHint::Primary));
        let h = parse_hints("/* PGVANE: Replica */ SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Replica));
        // primary wins over replica, in any order
        let h = parse_hints("/* pgvane: primary replica */ SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Primary));
        let h = parse_hints("/* pgvane: replica */ /* pgvane: route=primary */ SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Primary));
    }

    #[test]
    fn several_hints() {
        let h = parse_hints("/* pgvane: replica, max_lag=100ms */ SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Replica));
        assert_eq!(h.max_lag, Some(Duration::from_millis(100)));
        let h = parse_hints(
            "/* app: foo */ /* pgvane: shard=2 */\n-- pgvane: sharding_key = '4''2' max_lag=2s\n\
             /* pgvane: max_lag = 500ms */ SELECT 1",
        );
        assert_eq!(h.shard, Some(2));
        assert_eq!(h.sharding_key.as_deref(), Some("4'2"));
        assert_eq!(h.max_lag, Some(Duration::from_millis(500)));
        assert_eq!(h.route, None);
        let h = parse_hints("/* pgvane: sharding_key=42 */ SELECT 1");
        assert_eq!(h.sharding_key.as_deref(), Some("42"));
    }

    #[test]
    fn unknown_and_bad_hints_ignored() {
        let h = parse_hints("/* pgvane: fancy, colour=blue, shard=x, max_lag=soon, = */ SELECT 1");
        assert!(h.is_empty());
        let h = parse_hints("/* not pgvane: primary */ SELECT 1");
        assert!(h.is_empty());
        // a hint after the statement starts is not a leading hint
        let h = parse_hints("SELECT 1 /* pgvane: primary */");
        assert!(h.is_empty());
    }

    #[test]
    fn nested_and_unterminated_comments() {
        let h = parse_hints("/* pgvane: primary /* inner */ */ SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Primary));
        let h = parse_hints("/* x /* y */ */ /* pgvane: replica */ SELECT 1");
        assert_eq!(h.route, Some(RouteHint::Replica));
        let h = parse_hints("/* pgvane: primary");
        assert_eq!(h.route, Some(RouteHint::Primary));
        let h = parse_hints("/* pgvane: sharding_key='unterminated");
        assert_eq!(h.sharding_key.as_deref(), Some("unterminated"));
        let _ = parse_hints("/*");
        let _ = parse_hints("/*/");
        let _ = parse_hints("--");
        let _ = parse_hints("/* pgvane:é */");
    }
}
