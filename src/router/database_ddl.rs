//! Statements that PostgreSQL refuses while other sessions are connected to a database:
//! `DROP DATABASE x`, `ALTER DATABASE x RENAME TO y`, and `CREATE DATABASE y` (its template,
//! `template1` unless `TEMPLATE` names another, must have no other sessions).
//!
//! Owns: finding, in the first statement of a SQL string, the names of the databases that
//! must have no other sessions, with PostgreSQL's identifier rules (unquoted names folded to
//! lower case, `"quoted"` names kept with `""` unescaped).
//! Must not: touch pools. The session closes pgvane's own idle server connections to these
//! databases before it forwards the statement, so that a pooled connection nobody uses does
//! not make PostgreSQL answer "database is being accessed by other users" where a direct
//! connection would have succeeded.

use super::lexer::{Lexer, Tok};

/// The databases `sql`'s first statement needs free of other sessions (empty for any other
/// statement). Cheap to call on every statement: it stops at the first word that is not
/// DROP, ALTER or CREATE.
pub fn databases_needing_no_sessions(sql: &str) -> Vec<String> {
    let mut toks = Vec::new();
    for (tok, r) in Lexer::new(sql) {
        let text = sql.get(r).unwrap_or("");
        match tok {
            Tok::Space | Tok::Comment => continue,
            Tok::Op if text == ";" => break,
            _ => {}
        }
        if toks.is_empty()
            && !(tok == Tok::Word
                && ["drop", "alter", "create"]
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(text)))
        {
            return Vec::new();
        }
        toks.push((tok, text));
        if toks.len() == 2 && !(tok == Tok::Word && text.eq_ignore_ascii_case("database")) {
            return Vec::new();
        }
    }
    if toks.len() < 3 {
        return Vec::new();
    }
    let is = |i: usize, w: &str| {
        toks.get(i)
            .is_some_and(|(t, s)| *t == Tok::Word && s.eq_ignore_ascii_case(w))
    };
    let ident = |i: usize| toks.get(i).and_then(|(t, s)| identifier(*t, s));
    match toks[0].1.to_ascii_lowercase().as_str() {
        "drop" => {
            let at = if is(2, "if") && is(3, "exists") { 4 } else { 2 };
            ident(at).into_iter().collect()
        }
        "alter" if is(3, "rename") => ident(2).into_iter().collect(),
        "create" => {
            // CREATE DATABASE name [WITH] [option [=] value] ...: TEMPLATE [=] name.
            let template = (3..toks.len())
                .find(|&i| is(i, "template"))
                .and_then(|i| {
                    let v = if toks.get(i + 1).is_some_and(|(_, s)| *s == "=") {
                        i + 2
                    } else {
                        i + 1
                    };
                    if is(v, "default") {
                        Some("template1".to_string())
                    } else {
                        ident(v)
                    }
                })
                .unwrap_or_else(|| "template1".to_string());
            vec![template]
        }
        _ => Vec::new(),
    }
}

/// A database name as PostgreSQL resolves it, from a word or a quoted identifier (or a
/// string literal, which CREATE DATABASE's option values accept).
fn identifier(tok: Tok, s: &str) -> Option<String> {
    match tok {
        Tok::Word => Some(s.to_ascii_lowercase()),
        Tok::QuotedIdent => {
            let inner = s.strip_prefix('"')?.strip_suffix('"')?;
            Some(inner.replace("\"\"", "\""))
        }
        Tok::Str(_) => {
            let inner = s.strip_prefix('\'')?.strip_suffix('\'')?;
            Some(inner.replace("''", "'"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::databases_needing_no_sessions as dbs;

    #[test]
    fn drop_rename_and_create_name_the_databases_postgresql_needs_free() {
        assert_eq!(dbs("DROP DATABASE testdb"), ["testdb"]);
        assert_eq!(dbs("drop database if exists \"My\"\"Db\";"), ["My\"Db"]);
        assert_eq!(dbs("DROP DATABASE Shop WITH (FORCE)"), ["shop"]);
        assert_eq!(dbs("/* c */ ALTER DATABASE a RENAME TO b"), ["a"]);
        assert_eq!(dbs("CREATE DATABASE x"), ["template1"]);
        assert_eq!(dbs("CREATE DATABASE x TEMPLATE = tpl"), ["tpl"]);
        assert_eq!(
            dbs("create database x with owner u template \"T\" encoding 'UTF8'"),
            ["T"]
        );
        assert_eq!(dbs("CREATE DATABASE x TEMPLATE DEFAULT"), ["template1"]);
    }

    #[test]
    fn other_statements_name_none() {
        for sql in [
            "SELECT 1",
            "DROP TABLE database",
            "ALTER DATABASE a SET work_mem = '1MB'",
            "ALTER DATABASE a OWNER TO b",
            "CREATE TABLE t (a int)",
            "DROP DATABASE",
            "",
            "SELECT 'DROP DATABASE x'",
        ] {
            assert!(dbs(sql).is_empty(), "{sql}");
        }
    }
}
