//! Session state as PostgreSQL holds it, read from the server rather than guessed from SQL.
//!
//! Owns: the cheap text scan that says when a statement may have changed session state or
//! created something that ties the client to its server (the common path — statements
//! without these words — costs nothing), the capture query that reads a server's session
//! state after such a statement (settings with source `session` exactly as `pg_settings`
//! reports them, the session user and role, custom `x.y` settings the client named, and what
//! pins the session: temporary tables, session advisory locks, WITH HOLD cursors, SQL
//! PREPARE, LISTEN), and parsing its rows into [`Params`].
//!
//! Must not: do I/O. The transition SQL between two states is [`crate::params::sync_sql`].

use crate::params::{Params, Setting};
use crate::protocol::quote_literal;

/// Keys of the identity in [`Params`] (not settings in `pg_settings`).
pub const SESSION_USER: &str = "session_authorization";
pub const ROLE: &str = "role";

/// What keeps a client on its server connection.
pub const PIN_REASONS: [&str; 6] = [
    "temporary object",
    "advisory lock",
    "cursor WITH HOLD",
    "prepared statement (SQL PREPARE)",
    "LISTEN",
    "loaded library",
];

/// Index in [`PIN_REASONS`] of a library the client loaded (`server_close_on_library_load`).
pub const PIN_LIBRARY: usize = 5;

/// The capture query: rows of (name, value).
pub fn capture_sql(custom: &[String]) -> String {
    let mut s = String::from(
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
         UNION ALL SELECT '~user', session_user::text \
         UNION ALL SELECT '~role', pg_catalog.current_setting('role') \
         UNION ALL SELECT '~pins', pg_catalog.concat_ws(',', \
         CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) \
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_statistic_ext WHERE stxnamespace = pg_catalog.pg_my_temp_schema()) THEN '0' END, \
         CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) THEN '1' END, \
         CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable) THEN '2' END, \
         CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements WHERE from_sql) THEN '3' END, \
         CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) THEN '4' END)",
    );
    for c in custom {
        s.push_str(" UNION ALL SELECT ");
        s.push_str(&quote_literal(c));
        s.push_str(", pg_catalog.current_setting(");
        s.push_str(&quote_literal(c));
        s.push_str(", true)");
    }
    s
}

/// A server's session state, read by [`capture_sql`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub params: Params,
    /// Indexes into [`PIN_REASONS`].
    pub pins: Vec<usize>,
}

impl Captured {
    pub fn pin_reason(&self) -> Option<&'static str> {
        self.pins.first().and_then(|i| PIN_REASONS.get(*i).copied())
    }
}

/// Parse the capture rows; `login_user` is the user the server connection logged in as.
pub fn parse_capture(rows: &[(String, Option<String>)], login_user: &str) -> Captured {
    let mut c = Captured::default();
    for (name, value) in rows {
        let Some(v) = value else { continue };
        match name.as_str() {
            "~user" => {
                if v != login_user {
                    c.params.set(SESSION_USER, Setting::Value(v.clone()));
                }
            }
            "~role" => {
                if v != "none" {
                    c.params.set(ROLE, Setting::Value(v.clone()));
                }
            }
            "~pins" => {
                c.pins = v
                    .split(',')
                    .filter_map(|p| p.parse::<usize>().ok())
                    .filter(|i| *i < PIN_REASONS.len())
                    .collect();
            }
            // A custom setting that no longer exists (or was never set here).
            _ if v.is_empty() && name.contains('.') => {}
            _ => c.params.set(name, Setting::Value(v.clone())),
        }
    }
    c
}

/// The words (dotted names stay whole) of `sql` outside string literals, quoted
/// identifiers and comments, as slices of it, with `;` as its own word (statement
/// boundaries). Dollar-quote tags are skipped and their bodies scanned like the rest, so a
/// DO body's function calls stay visible. Allocates nothing: it runs on every Query.
struct Words<'a> {
    sql: &'a str,
    i: usize,
}

fn words_of(sql: &str) -> Words<'_> {
    Words { sql, i: 0 }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let (sql, b) = (self.sql, self.sql.as_bytes());
        let mut i = self.i;
        while i < b.len() {
            let c = b[i];
            match c {
                b'\'' => {
                    i += 1;
                    while i < b.len() {
                        if b[i] == b'\'' {
                            if b.get(i + 1) == Some(&b'\'') {
                                i += 2;
                                continue;
                            }
                            break;
                        }
                        i += 1;
                    }
                    i += 1;
                }
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += 1;
                    }
                    i += 1;
                }
                b'-' if b.get(i + 1) == Some(&b'-') => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                        i += 1;
                    }
                    i += 2;
                }
                b';' => {
                    self.i = i + 1;
                    return Some(";");
                }
                b'$' => {
                    // A `$tag$` / `$$` delimiter is skipped; `$1` is not a word either.
                    i += 1;
                    let tag = b[i..]
                        .iter()
                        .take_while(|x| x.is_ascii_alphanumeric() || **x == b'_')
                        .count();
                    if b.get(i + tag) == Some(&b'$') {
                        i += tag + 1;
                    }
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = i;
                    while i < b.len()
                        && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'$' | b'.'))
                    {
                        i += 1;
                    }
                    self.i = i;
                    return Some(&sql[start..i]);
                }
                _ => i += 1,
            }
        }
        self.i = b.len();
        None
    }
}

/// The lower-case words of `sql` (for the statements that [`touches_session`] flagged).
fn words(sql: &str) -> Vec<String> {
    words_of(sql).map(|w| w.to_ascii_lowercase()).collect()
}

fn is_one_of(word: &str, list: &[&str]) -> bool {
    list.iter().any(|l| l.eq_ignore_ascii_case(word))
}

/// First words of a statement that may change session state or pin the session.
const STATEMENT_WORDS: &[&str] = &[
    "set",
    "reset",
    "discard",
    "do",
    "call",
    "load",
    "prepare",
    "deallocate",
    "listen",
    "unlisten",
    "declare",
    "close",
    "drop",
];

/// Function names, anywhere, that change session state.
const FUNCTION_WORDS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// Words that can only end a pin (they matter to a pinned client only).
const UNPIN_STATEMENT_WORDS: &[&str] = &["close", "drop", "deallocate", "unlisten"];
const UNPIN_FUNCTION_WORDS: &[&str] = &[
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// Could this statement text change the session's state (settings, identity) or what pins
/// it? False for plain SELECT/INSERT/UPDATE/DELETE and friends: the common path.
pub fn touches_session(sql: &str) -> bool {
    scan(sql, true)
}

/// Does it do more than possibly end a pin (CLOSE, DROP, DEALLOCATE, UNLISTEN, advisory
/// unlocks)? When false, a client that is not pinned need not read anything back.
pub fn changes_beyond_unpinning(sql: &str) -> bool {
    scan(sql, false)
}

/// Does it read the session's sequence state (`currval`, `lastval`)? That state lives in
/// the server session where `nextval` ran and cannot be carried to another server.
pub fn reads_sequence_state(sql: &str) -> bool {
    mentions_val(sql)
        && words_of(sql).any(|w| {
            let f = w.rsplit('.').next().unwrap_or(w);
            f.eq_ignore_ascii_case("currval") || f.eq_ignore_ascii_case("lastval")
        })
}

/// May it set the session's sequence state: call `nextval`/`setval` by name, or be a
/// statement whose column defaults or triggers may call them?
pub fn may_set_sequence_state(sql: &str) -> bool {
    const FIRST: [&str; 7] = ["insert", "copy", "merge", "call", "do", "update", "execute"];
    let starts = words_of(sql)
        .next()
        .is_some_and(|w| FIRST.iter().any(|k| w.eq_ignore_ascii_case(k)));
    if starts {
        return true;
    }
    if !mentions_val(sql) {
        return false;
    }
    let mut first = true;
    words_of(sql).any(|w| {
        let f = w.rsplit('.').next().unwrap_or(w);
        let hit = f.eq_ignore_ascii_case("nextval")
            || f.eq_ignore_ascii_case("setval")
            || (first
                && ["insert", "copy", "merge", "call", "do", "update", "execute"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)));
        first = w == ";";
        hit
    })
}

/// A cheap filter before a word scan: every sequence-state function name ends in "val".
fn mentions_val(sql: &str) -> bool {
    sql.as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"val"))
}

/// Why a statement reading sequence state is refused on a server connection the client
/// does not own.
pub const SEQUENCE_STATE: &str = "currval() and lastval() read the state of the server session where nextval() ran, and this transaction runs on another pooled server connection: call them in the same transaction as nextval(), use INSERT ... RETURNING, or use session pooling (or pin_session_state)";

fn scan(sql: &str, with_unpinning: bool) -> bool {
    let mut at_start = true;
    // Words left in which `create` may still be followed by TEMP/TEMPORARY.
    let mut create_window = 0;
    let mut declared = false;
    for word in words_of(sql) {
        if word == ";" {
            at_start = true;
            create_window = 0;
            continue;
        }
        if create_window > 0 {
            create_window -= 1;
            if is_one_of(word, &["temp", "temporary"]) {
                return true;
            }
        }
        if at_start {
            at_start = false;
            if word.eq_ignore_ascii_case("create") {
                create_window = 3;
            } else if word.eq_ignore_ascii_case("declare") {
                // A cursor without HOLD ends with its transaction: nothing to read back.
                declared = true;
            } else if is_one_of(word, STATEMENT_WORDS)
                && (with_unpinning || !is_one_of(word, UNPIN_STATEMENT_WORDS))
            {
                return true;
            }
        }
        if declared && word.eq_ignore_ascii_case("hold") {
            return true;
        }
        let bare = word.rsplit('.').next().unwrap_or(word);
        if is_one_of(bare, FUNCTION_WORDS)
            && (with_unpinning || !is_one_of(bare, UNPIN_FUNCTION_WORDS))
        {
            return true;
        }
        if word
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("pg_temp"))
        {
            return true;
        }
    }
    false
}

/// What a statement may have changed in the session, as far as its text tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing (the common path, or a transaction-scoped `SET LOCAL`).
    None,
    /// Only these settings (a plain `SET name ...`, `SELECT set_config('name', ...)`) and
    /// possibly the identity: reading them back is cheap.
    Names(Vec<String>),
    /// Anything: read the whole state (`pg_settings`) and the pins.
    Unknown,
}

impl Change {
    /// Both changes together.
    pub fn and(self, other: Change) -> Change {
        match (self, other) {
            (Change::Unknown, _) | (_, Change::Unknown) => Change::Unknown,
            (Change::None, c) | (c, Change::None) => c,
            (Change::Names(mut a), Change::Names(b)) => {
                for n in b {
                    if !a.contains(&n) {
                        a.push(n);
                    }
                }
                Change::Names(a)
            }
        }
    }
}

/// Classify a statement text (see [`Change`]).
pub fn classify(sql: &str) -> Change {
    if !touches_session(sql) {
        return Change::None;
    }
    let w = words(sql);
    let stmts = w.split(|x| x == ";").filter(|s| !s.is_empty()).count();
    if stmts == 1 && !w.iter().any(|x| x == "default") {
        match (w.first().map(String::as_str), w.get(1).map(String::as_str)) {
            (Some("set"), Some("local" | "transaction" | "constraints")) => return Change::None,
            (Some("set"), Some("session")) if w.get(2).is_some_and(|x| x == "authorization") => {
                return Change::Names(Vec::new())
            }
            (Some("set"), Some("role")) => return Change::Names(Vec::new()),
            (Some("set"), Some("session" | "time" | "names" | "schema" | "characteristics")) => {
                return Change::Unknown
            }
            (Some("set"), Some(name)) if !name.contains(';') => {
                let name = name.to_string();
                return if FUNCTION_WORDS
                    .iter()
                    .any(|f| w.iter().any(|x| x.ends_with(f)))
                {
                    Change::Unknown
                } else {
                    Change::Names(vec![name])
                };
            }
            (Some("select"), _) => {
                // SELECT set_config('literal', ..., ...) and nothing else state-changing.
                let only_set_config = w.iter().all(|x| {
                    let bare = x.rsplit('.').next().unwrap_or(x);
                    !FUNCTION_WORDS.contains(&bare) || bare == "set_config"
                });
                if only_set_config {
                    if let Some(names) = set_config_names(sql) {
                        return Change::Names(names);
                    }
                }
            }
            _ => {}
        }
    }
    Change::Unknown
}

/// The literal first arguments of every `set_config(` call; None if one is not a literal.
fn set_config_names(sql: &str) -> Option<Vec<String>> {
    let lower = sql.to_ascii_lowercase();
    let mut rest = lower.as_str();
    let mut out = Vec::new();
    while let Some(i) = rest.find("set_config") {
        rest = &rest[i + "set_config".len()..];
        let t = rest.trim_start().strip_prefix('(')?.trim_start();
        let t = t.strip_prefix('\'')?;
        let end = t.find('\'')?;
        let name = &t[..end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return None;
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The cheap capture after a [`Change::Names`]: the identity and those settings' values.
pub fn names_sql(names: &[String]) -> String {
    let mut s = String::from(
        "SELECT '~user', session_user::text UNION ALL SELECT '~role', pg_catalog.current_setting('role')",
    );
    for n in names {
        s.push_str(" UNION ALL SELECT ");
        s.push_str(&quote_literal(n));
        s.push_str(", pg_catalog.current_setting(");
        s.push_str(&quote_literal(n));
        s.push_str(", true)");
    }
    s
}

/// Apply a [`names_sql`] answer to `params` (a value, or gone when NULL; the identity).
pub fn apply_names(params: &mut Params, rows: &[(String, Option<String>)], login_user: &str) {
    for (name, value) in rows {
        match (name.as_str(), value) {
            ("~user", Some(v)) if v != login_user => {
                params.set(SESSION_USER, Setting::Value(v.clone()))
            }
            ("~user", _) => params.remove(SESSION_USER),
            ("~role", Some(v)) if v != "none" => params.set(ROLE, Setting::Value(v.clone())),
            ("~role", _) => params.remove(ROLE),
            (n, Some(v)) => params.set(n, Setting::Value(v.clone())),
            (n, None) => params.remove(n),
        }
    }
}

/// Custom (`prefix.name`) settings a statement names in `SET x.y` or `set_config('x.y', ...)`:
/// `pg_settings` does not list them, so the capture asks for them by name.
pub fn custom_names(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = sql.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("set_config") {
        rest = &rest[i + "set_config".len()..];
        let t = rest.trim_start();
        if let Some(t) = t.strip_prefix('(') {
            let t = t.trim_start();
            if let Some(t) = t.strip_prefix('\'') {
                if let Some(end) = t.find('\'') {
                    let name = &t[..end];
                    if name.contains('.') && !out.iter().any(|n| n == name) {
                        out.push(name.to_string());
                    }
                }
            }
        }
    }
    let w = words(sql);
    let mut at_start = true;
    for (i, word) in w.iter().enumerate() {
        if word == ";" {
            at_start = true;
            continue;
        }
        if at_start && (word == "set" || word == "reset") {
            let mut j = i + 1;
            if w.get(j).is_some_and(|n| n == "session" || n == "local") {
                j += 1;
            }
            if let Some(name) = w.get(j).filter(|n| n.contains('.')) {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
        at_start = false;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_state_reads_are_found_outside_literals() {
        assert!(reads_sequence_state("SELECT lastval()"));
        assert!(reads_sequence_state("select CURRVAL('s'::regclass)"));
        assert!(reads_sequence_state(
            "INSERT INTO t VALUES (pg_catalog.currval('s'))"
        ));
        assert!(!reads_sequence_state("SELECT 'lastval()'"));
        assert!(!reads_sequence_state("SELECT nextval('s') -- then lastval"));
        assert!(!reads_sequence_state("SELECT lastvalue FROM t"));
        assert!(may_set_sequence_state("SELECT nextval('s')"));
        assert!(may_set_sequence_state("insert into t default values"));
        assert!(may_set_sequence_state("SELECT 1; INSERT INTO t VALUES (1)"));
        assert!(!may_set_sequence_state(
            "SELECT * FROM t WHERE note = 'insert'"
        ));
        assert!(!may_set_sequence_state("SELECT lastval()"));
    }

    #[test]
    fn the_common_path_is_not_flagged() {
        for sql in [
            "SELECT 1",
            "select * from t where a = 'set work_mem = 1'",
            "UPDATE t SET a = 1 WHERE b = 2",
            "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2",
            "BEGIN",
            "COMMIT",
            "ALTER TABLE t ALTER COLUMN b SET DEFAULT 1",
            "SELECT \"set\" FROM t",
            "-- set x = 1\nSELECT 1",
        ] {
            assert!(!touches_session(sql), "{sql}");
        }
    }

    #[test]
    fn state_changes_and_pins_are_flagged() {
        for sql in [
            "SET work_mem = '1MB'",
            "  /* c */ set search_path = pg_catalog, public; SELECT 1",
            "SELECT 1; SET search_path = x",
            "SELECT set_config('search_path', 'x', false)",
            "WITH s AS (SELECT pg_catalog.set_config('a.b', '1', false)) SELECT * FROM s",
            "DO $$ BEGIN PERFORM set_config('a.b', '1', false); END $$",
            "RESET ALL",
            "DISCARD ALL",
            "SET SESSION AUTHORIZATION u2",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "CREATE TEMP TABLE x (a int)",
            "create local temporary table x (a int)",
            "SELECT pg_advisory_lock(1)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
            "LISTEN chan",
            "DROP TABLE x",
            "CREATE STATISTICS pg_temp.s ON a, b FROM t",
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ] {
            assert!(touches_session(sql), "{sql}");
        }
    }

    #[test]
    fn plain_sets_are_read_back_by_name_and_the_rest_in_full() {
        assert_eq!(classify("SELECT 1"), Change::None);
        assert_eq!(classify("SET LOCAL work_mem = '8MB'"), Change::None);
        assert_eq!(
            classify("SET work_mem = '4MB'"),
            Change::Names(vec!["work_mem".into()])
        );
        assert_eq!(
            classify("select pg_catalog.set_config('app.tenant', $1, false)"),
            Change::Names(vec!["app.tenant".into()])
        );
        assert_eq!(
            classify("SET SESSION AUTHORIZATION u2"),
            Change::Names(vec![])
        );
        for sql in [
            "RESET ALL",
            "RESET work_mem",
            "SET work_mem = '1MB'; SELECT 1",
            "SELECT set_config(name, 'x', false) FROM t",
            "DO $$ BEGIN PERFORM set_config('a.b', '1', false); END $$",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SELECT pg_advisory_lock(1)",
            "CREATE TEMP TABLE x (a int)",
        ] {
            assert_eq!(classify(sql), Change::Unknown, "{sql}");
        }
        assert_eq!(
            Change::Names(vec!["a".into()]).and(Change::Names(vec!["b".into(), "a".into()])),
            Change::Names(vec!["a".into(), "b".into()])
        );
        assert_eq!(Change::None.and(Change::Unknown), Change::Unknown);
    }

    #[test]
    fn names_answers_update_params() {
        let mut p = Params::default();
        p.set("work_mem", Setting::Value("1MB".into()));
        p.set(ROLE, Setting::Value("r".into()));
        let rows = vec![
            ("~user".to_string(), Some("app".to_string())),
            ("~role".to_string(), Some("none".to_string())),
            ("work_mem".to_string(), Some("4MB".to_string())),
            ("app.gone".to_string(), None),
        ];
        apply_names(&mut p, &rows, "app");
        assert_eq!(p.get("work_mem"), Some(&Setting::Value("4MB".into())));
        assert_eq!(p.get(ROLE), None);
        assert_eq!(p.get(SESSION_USER), None);
    }

    #[test]
    fn unpinning_words_matter_only_to_pinned_clients() {
        for sql in [
            "DROP TABLE t",
            "CLOSE c",
            "DEALLOCATE p",
            "UNLISTEN *",
            "SELECT pg_advisory_unlock(1)",
        ] {
            assert!(touches_session(sql), "{sql}");
            assert!(!changes_beyond_unpinning(sql), "{sql}");
        }
        for sql in [
            "SET work_mem = 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "LISTEN x",
        ] {
            assert!(changes_beyond_unpinning(sql), "{sql}");
        }
        assert!(!touches_session("DECLARE c CURSOR FOR SELECT 1"));
    }

    #[test]
    fn custom_settings_are_named() {
        assert_eq!(
            custom_names("SELECT set_config('app.user', '7', false)"),
            vec!["app.user".to_string()]
        );
        assert_eq!(custom_names("SET app.tenant = 'x'"), vec!["app.tenant"]);
        assert_eq!(custom_names("SET SESSION myapp.a TO 1"), vec!["myapp.a"]);
        assert!(custom_names("SET work_mem = 1").is_empty());
    }

    #[test]
    fn capture_rows_become_params_and_pins() {
        let rows = vec![
            ("work_mem".to_string(), Some("77".to_string())),
            ("DateStyle".to_string(), Some("ISO, YMD".to_string())),
            ("~user".to_string(), Some("u2".to_string())),
            ("~role".to_string(), Some("none".to_string())),
            ("~pins".to_string(), Some("1,3".to_string())),
            ("app.x".to_string(), Some("".to_string())),
            ("app.y".to_string(), Some("5".to_string())),
        ];
        let c = parse_capture(&rows, "app");
        assert_eq!(c.params.get("work_mem"), Some(&Setting::Value("77".into())));
        assert_eq!(
            c.params.get("datestyle"),
            Some(&Setting::Value("ISO, YMD".into()))
        );
        assert_eq!(
            c.params.get(SESSION_USER),
            Some(&Setting::Value("u2".into()))
        );
        assert_eq!(c.params.get(ROLE), None);
        assert_eq!(c.params.get("app.x"), None);
        assert_eq!(c.params.get("app.y"), Some(&Setting::Value("5".into())));
        assert_eq!(c.pin_reason(), Some("advisory lock"));
        let clean = parse_capture(&[("~user".into(), Some("app".into()))], "app");
        assert!(clean.params.is_empty());
        assert!(clean.pins.is_empty());
    }
}
