//! Session settings (GUCs) that must follow a client from server to server.
//!
//! Owns: the representation of a client's settings (startup parameters, `options=-c ...`,
//! session-level `SET`/`RESET`), recognising `SET`/`RESET` statements cheaply, and computing
//! the SQL that brings a server's settings in line with a client's (only what differs).
//!
//! Must not: do I/O or know about pools. Pure functions over strings and maps.

/// How a setting is (re)applied on a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Setting {
    /// A plain value, applied with `set_config(name, value, false)` (startup parameters).
    Value(String),
    /// The client's own `SET` statement, replayed verbatim.
    Sql(String),
}

/// Settings by lower-case name, kept sorted in a Vec: sessions hold one or two of these for
/// their whole life, and a Vec costs only what it holds (a BTreeMap leaf allocates room for
/// eleven entries), which matters for thousands of idle clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Params(Vec<(String, Setting)>);

impl Params {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }
    pub fn set(&mut self, name: &str, s: Setting) {
        let name = name.to_ascii_lowercase();
        match self.find(&name) {
            Ok(i) => self.0[i].1 = s,
            Err(i) => self.0.insert(i, (name, s)),
        }
    }
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(&name.to_ascii_lowercase()) {
            self.0.remove(i);
        }
    }
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Setting)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    /// `self` with `over` laid on top.
    pub fn overlay(&self, over: &Params) -> Params {
        let mut m = self.clone();
        for (k, v) in &over.0 {
            m.set(k, v.clone());
        }
        m.0.shrink_to_fit();
        m
    }
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Settings a client asked for in its startup packet, including `options=-c k=v` / `--k=v`.
pub fn from_startup(params: &[(String, String)]) -> Params {
    let mut p = Params::default();
    for (k, v) in params {
        let kl = k.to_ascii_lowercase();
        if kl == "options" {
            for (ok, ov) in parse_options(v) {
                p.set(&ok, Setting::Value(ov));
            }
        } else if !NOT_SETTINGS.contains(&kl.as_str()) {
            p.set(&kl, Setting::Value(v.clone()));
        }
    }
    p
}

/// Parse a libpq `options` string: `-c name=value`, `-cname=value`, `--name=value`,
/// with backslash-escaped spaces as PostgreSQL reads them.
pub fn parse_options(s: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let kv = if w == "-c" {
            i += 1;
            words.get(i).cloned()
        } else if let Some(r) = w.strip_prefix("-c") {
            Some(r.to_string())
        } else {
            w.strip_prefix("--").map(|r| r.to_string())
        };
        if let Some(kv) = kv {
            if let Some((k, v)) = kv.split_once('=') {
                out.push((k.replace('-', "_").to_ascii_lowercase(), v.to_string()));
            }
        }
        i += 1;
    }
    out
}

/// A recognised session-level settings statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetCmd {
    Set { name: String, sql: String },
    Reset(String),
    ResetAll,
}

/// Skip whitespace and SQL comments at the start of a statement.
pub fn skip_ws_comments(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        if let Some(r) = t.strip_prefix("--") {
            s = r.find('\n').map(|i| &r[i + 1..]).unwrap_or("");
        } else if let Some(r) = t.strip_prefix("/*") {
            s = r.find("*/").map(|i| &r[i + 2..]).unwrap_or("");
        } else {
            return t;
        }
    }
}

fn next_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    if let Some(r) = s.strip_prefix('"') {
        if let Some(end) = r.find('"') {
            return (&r[..end], &r[end + 1..]);
        }
    }
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// Recognise `SET [SESSION] name {TO|=} ...`, `SET TIME ZONE ...`, `SET ROLE ...`,
/// `SET SESSION AUTHORIZATION ...`, `RESET name` and `RESET ALL`. Transaction-scoped forms
/// (`SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`) and multi-statement strings give None.
pub fn parse_set(sql: &str) -> Option<SetCmd> {
    let s = skip_ws_comments(sql);
    let stmt = s.trim_end().trim_end_matches(';').trim_end();
    if stmt.contains(';') {
        return None;
    }
    let (w, rest) = next_word(stmt);
    if w.eq_ignore_ascii_case("set") {
        let (mut name, mut rest) = next_word(rest);
        if name.eq_ignore_ascii_case("session") {
            let (n2, r2) = next_word(rest);
            if n2.eq_ignore_ascii_case("authorization") {
                return Some(SetCmd::Set {
                    name: "session_authorization".into(),
                    sql: stmt.to_string(),
                });
            }
            if n2.eq_ignore_ascii_case("characteristics") {
                return None;
            }
            name = n2;
            rest = r2;
        }
        let lname = name.to_ascii_lowercase();
        let canonical = match lname.as_str() {
            "" | "local" | "transaction" | "constraints" => return None,
            "time" => {
                let (zone, _) = next_word(rest);
                if !zone.eq_ignore_ascii_case("zone") {
                    return None;
                }
                "timezone".to_string()
            }
            "role" => "role".to_string(),
            "names" => "client_encoding".to_string(),
            "schema" => "search_path".to_string(),
            _ => {
                let r = rest.trim_start();
                let ok =
                    r.starts_with('=') || r.get(..2).is_some_and(|t| t.eq_ignore_ascii_case("to"));
                if !ok {
                    return None;
                }
                lname
            }
        };
        return Some(SetCmd::Set {
            name: canonical,
            sql: stmt.to_string(),
        });
    }
    if w.eq_ignore_ascii_case("reset") {
        let (name, rest) = next_word(rest);
        let lname = name.to_ascii_lowercase();
        return match lname.as_str() {
            "all" => Some(SetCmd::ResetAll),
            "" => None,
            "session" => {
                let (n2, _) = next_word(rest);
                n2.eq_ignore_ascii_case("authorization")
                    .then(|| SetCmd::Reset("session_authorization".into()))
            }
            "time" => Some(SetCmd::Reset("timezone".into())),
            _ => Some(SetCmd::Reset(lname)),
        };
    }
    None
}

fn ident(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn is_identity(name: &str) -> bool {
    name == "session_authorization" || name == "role"
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// SQL that turns a server whose settings are `server` into one with `client`'s, or None.
///
/// The identity goes back to the login user first (settings that need its rights are then
/// applied with them), the client's identity is taken last. Run as one simple Query, the
/// statements form one implicit transaction: they apply wholly or not at all.
pub fn sync_sql(client: &Params, server: &Params) -> Option<String> {
    if client == server {
        return None;
    }
    let mut sql = String::new();
    let server_identity = server.iter().any(|(k, _)| is_identity(k));
    if server_identity {
        sql.push_str("RESET ROLE;RESET SESSION AUTHORIZATION;");
    }
    for (k, v) in client.iter().filter(|(k, _)| !is_identity(k)) {
        if server.get(k) == Some(v) {
            continue;
        }
        match v {
            Setting::Value(val) => {
                sql.push_str("SELECT pg_catalog.set_config(");
                sql.push_str(&crate::protocol::quote_literal(k));
                sql.push_str(", ");
                sql.push_str(&crate::protocol::quote_literal(val));
                sql.push_str(", false);");
            }
            Setting::Sql(stmt) => {
                sql.push_str(stmt);
                sql.push(';');
            }
        }
    }
    for (k, _) in server.iter().filter(|(k, _)| !is_identity(k)) {
        if client.get(k).is_none() {
            if k == "timezone" {
                sql.push_str("RESET TIME ZONE;");
            } else {
                sql.push_str("RESET ");
                sql.push_str(&ident(k));
                sql.push(';');
            }
        }
    }
    let client_identity = client.iter().any(|(k, _)| is_identity(k));
    if client_identity && (server_identity || client_identity_differs(client, server)) {
        for key in ["session_authorization", "role"] {
            match client.get(key) {
                Some(Setting::Value(v)) if key == "role" => {
                    sql.push_str("SET ROLE ");
                    sql.push_str(&quote_ident(v));
                    sql.push(';');
                }
                Some(Setting::Value(v)) => {
                    sql.push_str("SET SESSION AUTHORIZATION ");
                    sql.push_str(&quote_ident(v));
                    sql.push(';');
                }
                Some(Setting::Sql(stmt)) => {
                    sql.push_str(stmt);
                    sql.push(';');
                }
                None => {}
            }
        }
    }
    (!sql.is_empty()).then_some(sql)
}

fn client_identity_differs(client: &Params, server: &Params) -> bool {
    ["session_authorization", "role"]
        .iter()
        .any(|k| client.get(k) != server.get(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parsing() {
        let o =
            parse_options("-c search_path=a,b -cstatement_timeout=5s --work-mem=64MB -c x=a\\ b");
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64MB".into()),
                ("x".into(), "a b".into()),
            ]
        );
    }

    #[test]
    fn set_statements() {
        assert_eq!(
            parse_set("  SET search_path TO foo, public;"),
            Some(SetCmd::Set {
                name: "search_path".into(),
                sql: "SET search_path TO foo, public".into()
            })
        );
        assert_eq!(
            parse_set("/* c */ set SESSION statement_timeout = '1s'"),
            Some(SetCmd::Set {
                name: "statement_timeout".into(),
                sql: "set SESSION statement_timeout = '1s'".into()
            })
        );
        assert!(
            matches!(parse_set("SET TIME ZONE 'UTC'"), Some(SetCmd::Set { name, .. }) if name == "timezone")
        );
        assert_eq!(parse_set("SET LOCAL search_path TO x"), None);
        assert_eq!(
            parse_set("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            None
        );
        assert_eq!(parse_set("SET a TO 1; SELECT 1"), None);
        assert_eq!(parse_set("RESET ALL"), Some(SetCmd::ResetAll));
        assert_eq!(
            parse_set("reset Search_Path"),
            Some(SetCmd::Reset("search_path".into()))
        );
        assert_eq!(parse_set("SELECT 1"), None);
        assert_eq!(parse_set("settle"), None);
    }

    #[test]
    fn sync_only_what_differs() {
        let mut c = Params::default();
        c.set("application_name", Setting::Value("it's".into()));
        c.set("search_path", Setting::Sql("SET search_path TO x".into()));
        let mut s = Params::default();
        s.set("search_path", Setting::Sql("SET search_path TO x".into()));
        s.set("work_mem", Setting::Sql("SET work_mem = '1MB'".into()));
        let sql = sync_sql(&c, &s).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('application_name', 'it''s', false);RESET work_mem;"
        );
        assert_eq!(sync_sql(&c, &c.clone()), None);
    }

    #[test]
    fn identity_is_reset_first_and_taken_last() {
        // Server: another client's identity and a superuser-only setting.
        let mut s = Params::default();
        s.set("session_authorization", Setting::Value("u2".into()));
        s.set("lo_compat_privileges", Setting::Value("on".into()));
        // A clean client: back to the login user, then the setting is reset with its rights.
        assert_eq!(
            sync_sql(&Params::default(), &s).unwrap(),
            "RESET ROLE;RESET SESSION AUTHORIZATION;RESET lo_compat_privileges;"
        );
        // A client with its own identity and settings: settings first, identity last.
        let mut c = Params::default();
        c.set("work_mem", Setting::Value("77".into()));
        c.set("role", Setting::Value("Reader".into()));
        c.set("session_authorization", Setting::Value("u\"3".into()));
        assert_eq!(
            sync_sql(&c, &s).unwrap(),
            "RESET ROLE;RESET SESSION AUTHORIZATION;\
             SELECT pg_catalog.set_config('work_mem', '77', false);\
             RESET lo_compat_privileges;\
             SET SESSION AUTHORIZATION \"u\"\"3\";SET ROLE \"Reader\";"
        );
        // From a clean server only the client's identity is added.
        let mut only = Params::default();
        only.set("role", Setting::Value("r".into()));
        assert_eq!(
            sync_sql(&only, &Params::default()).unwrap(),
            "SET ROLE \"r\";"
        );
    }

    #[test]
    fn startup_params() {
        let p = from_startup(&[
            ("user".into(), "u".into()),
            ("database".into(), "d".into()),
            ("application_name".into(), "psql".into()),
            ("options".into(), "-c search_path=s".into()),
        ]);
        assert_eq!(
            p.get("application_name"),
            Some(&Setting::Value("psql".into()))
        );
        assert_eq!(p.get("search_path"), Some(&Setting::Value("s".into())));
        assert_eq!(p.get("user"), None);
    }
}
