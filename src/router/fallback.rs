//! Keyword-level classification of text that sqlparser rejects.
//!
//! Owns: splitting the text into statements with the router lexer and classifying each by
//! its leading keywords (DO, VACUUM (...), CLUSTER, REINDEX, CHECKPOINT, PREPARE TRANSACTION,
//! COMMIT PREPARED, FOR NO KEY UPDATE, `TABLE name`, ...), so such statements get a precise
//! reason instead of [`Reason::ParseFailure`].
//! Must not: guess a read where it is unsure (unknown text is a write), do I/O, or panic.

use super::classify::{classify, parse, Reason, StatementKind, Verdict};
use super::lexer::{Lexer, Tok};

/// The first keyword of a statement, as a static string for reasons (`OTHER` if unknown).
pub(super) fn static_keyword(word: &str) -> &'static str {
    #[rustfmt::skip]
    const KEYWORDS: &[&str] = &[
        "VACUUM", "ANALYZE", "ANALYSE", "CLUSTER", "REINDEX", "CHECKPOINT", "LISTEN", "NOTIFY",
        "UNLISTEN", "LOCK", "CALL", "DO", "LOAD", "EXECUTE", "FETCH", "MOVE", "CLOSE",
        "DECLARE", "REFRESH", "SECURITY", "IMPORT", "REASSIGN", "COPY", "CREATE", "ALTER",
        "DROP", "GRANT", "REVOKE", "COMMENT", "TRUNCATE", "INSERT", "UPDATE", "DELETE",
        "MERGE", "KILL", "USE", "PRAGMA", "CACHE", "UNCACHE", "ATTACH", "DETACH", "INSTALL",
        "MSCK", "DESCRIBE", "DESC", "FLUSH", "OPTIMIZE", "UNLOAD", "PUT", "REMOVE", "LIST",
        "UNLOCK", "RENAME", "DENY", "EXPORT", "RAISE", "RETURN", "PRINT", "THROW", "WAITFOR",
        "ASSERT", "OPEN", "SAVEPOINT",
    ];
    KEYWORDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("OTHER")
}

/// Keyword-level classification of text sqlparser rejected, statement by statement.
pub(super) fn fallback(sql: &str, wf: &[String]) -> Vec<Verdict> {
    let mut pieces: Vec<Vec<(Tok, &str, usize)>> = vec![Vec::new()];
    for (tok, r) in Lexer::new(sql) {
        let text = sql.get(r.clone()).unwrap_or("");
        match tok {
            Tok::Space | Tok::Comment => {}
            Tok::Op if text == ";" => pieces.push(Vec::new()),
            _ => {
                if let Some(p) = pieces.last_mut() {
                    p.push((tok, text, r.start));
                }
            }
        }
    }
    pieces.retain(|p| !p.is_empty());
    // Re-parse pieces one by one only for a handful of them (bounded work on a miss).
    let several = (2..=64).contains(&pieces.len());
    pieces
        .iter()
        .map(|p| {
            if several {
                // One bad statement should not hide what the others are.
                let start = p.first().map_or(0, |t| t.2);
                let end = p.last().map_or(0, |t| t.2 + t.1.len());
                if let Some(stmts) = sql.get(start..end).and_then(parse) {
                    if let [one] = stmts.as_slice() {
                        return classify(one, wf);
                    }
                }
            }
            keyword_verdict(p)
        })
        .collect()
}

fn keyword_verdict(toks: &[(Tok, &str, usize)]) -> Verdict {
    use StatementKind as K;
    let word = |i: usize| -> String {
        match toks.get(i) {
            Some((Tok::Word, w, _)) => w.to_ascii_uppercase(),
            _ => String::new(),
        }
    };
    let has = |w: &str| {
        toks.iter()
            .any(|t| t.0 == Tok::Word && t.1.eq_ignore_ascii_case(w))
    };
    // The last `READ ONLY` / `READ WRITE` (not `READ COMMITTED`).
    let read_only = || {
        toks.windows(2).rev().find_map(|w| {
            if !w[0].1.eq_ignore_ascii_case("read") {
                None
            } else if w[1].1.eq_ignore_ascii_case("only") {
                Some(true)
            } else if w[1].1.eq_ignore_ascii_case("write") {
                Some(false)
            } else {
                None
            }
        })
    };
    let (first, second) = (word(0), word(1));
    let v = |kind, write, reason| Verdict::new(kind, write, reason);
    match (first.as_str(), second.as_str()) {
        ("PREPARE", "TRANSACTION") => v(K::Utility, true, Reason::Utility("PREPARE TRANSACTION")),
        ("COMMIT", "PREPARED") => v(K::Utility, true, Reason::Utility("COMMIT PREPARED")),
        ("ROLLBACK", "PREPARED") => v(K::Utility, true, Reason::Utility("ROLLBACK PREPARED")),
        ("BEGIN" | "START", _) => v(
            K::Begin {
                read_only: read_only(),
            },
            false,
            Reason::TransactionControl,
        ),
        ("COMMIT" | "END", _) => v(K::Commit, false, Reason::TransactionControl),
        ("ROLLBACK" | "ABORT", _) if has("to") => {
            v(K::Savepoint, false, Reason::TransactionControl)
        }
        ("ROLLBACK" | "ABORT", _) => v(K::Rollback, false, Reason::TransactionControl),
        ("SAVEPOINT" | "RELEASE", _) => v(K::Savepoint, false, Reason::TransactionControl),
        ("SET", "TRANSACTION") => v(
            K::SetTransaction {
                read_only: read_only(),
                session_default: false,
            },
            false,
            Reason::Session,
        ),
        ("SET", "SESSION") if has("characteristics") => v(
            K::SetTransaction {
                read_only: read_only(),
                session_default: true,
            },
            false,
            Reason::Session,
        ),
        ("SET", _) => v(K::Set, false, Reason::Session),
        ("RESET", _) => v(K::Reset, false, Reason::Session),
        ("DISCARD", _) => v(K::Discard, false, Reason::Session),
        ("DEALLOCATE", _) => v(K::Deallocate, false, Reason::Session),
        ("SHOW", _) => v(K::Show, false, Reason::Read),
        ("PREPARE", _) => v(K::Prepare, true, Reason::ParseFailure),
        ("EXPLAIN", _) => v(
            K::Explain {
                analyze: has("analyze") || has("analyse"),
            },
            true,
            Reason::ParseFailure,
        ),
        ("INSERT", _) => v(K::Insert, true, Reason::WriteStatement("INSERT")),
        ("UPDATE", _) => v(K::Update, true, Reason::WriteStatement("UPDATE")),
        ("DELETE", _) => v(K::Delete, true, Reason::WriteStatement("DELETE")),
        ("MERGE", _) => v(K::Merge, true, Reason::WriteStatement("MERGE")),
        ("COPY", _) => copy_verdict(toks),
        (
            "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "COMMENT" | "GRANT" | "REVOKE" | "REFRESH"
            | "SECURITY" | "IMPORT" | "REASSIGN",
            _,
        ) => v(K::Ddl, true, Reason::Ddl),
        (
            "DO" | "VACUUM" | "ANALYZE" | "ANALYSE" | "CLUSTER" | "REINDEX" | "CHECKPOINT"
            | "LISTEN" | "NOTIFY" | "UNLISTEN" | "LOCK" | "CALL" | "LOAD" | "EXECUTE",
            _,
        ) => {
            let kind = if first == "EXECUTE" {
                K::Execute
            } else {
                K::Utility
            };
            v(kind, true, Reason::Utility(static_keyword(&first)))
        }
        ("SELECT" | "WITH" | "VALUES" | "TABLE", _) => query_verdict(toks, &first),
        _ if toks.first().is_some_and(|t| t.1 == "(") => query_verdict(toks, ""),
        _ => v(K::Other, true, Reason::ParseFailure),
    }
}

/// COPY that sqlparser rejected: `FROM` at parenthesis depth 0 means COPY FROM.
fn copy_verdict(toks: &[(Tok, &str, usize)]) -> Verdict {
    let mut depth = 0i32;
    for (i, (tok, text, _)) in toks.iter().enumerate() {
        match (tok, *text) {
            (Tok::Op, "(") => depth += 1,
            (Tok::Op, ")") => depth -= 1,
            (Tok::Word, w) if depth == 0 && w.eq_ignore_ascii_case("from") => {
                let from_stdin = toks
                    .get(i + 1)
                    .is_some_and(|t| t.1.eq_ignore_ascii_case("stdin"));
                let kind = StatementKind::Copy {
                    from_stdin,
                    to: false,
                };
                return Verdict::new(kind, true, Reason::CopyFrom);
            }
            _ => {}
        }
    }
    Verdict::new(
        StatementKind::Copy {
            from_stdin: false,
            to: true,
        },
        true,
        Reason::ParseFailure,
    )
}

/// A query sqlparser rejected: locking clauses, writable CTEs and plain `TABLE name`.
fn query_verdict(toks: &[(Tok, &str, usize)], first: &str) -> Verdict {
    let w = |i: usize, s: &str| {
        toks.get(i)
            .is_some_and(|t| t.0 == Tok::Word && t.1.eq_ignore_ascii_case(s))
    };
    let kind = StatementKind::Select;
    for i in 0..toks.len() {
        if w(i, "for")
            && (w(i + 1, "update")
                || w(i + 1, "share")
                || (w(i + 1, "no") && w(i + 2, "key"))
                || (w(i + 1, "key") && w(i + 2, "share")))
        {
            return Verdict::new(kind, true, Reason::LockingClause);
        }
    }
    let dml = (0..toks.len()).any(|i| {
        w(i, "insert")
            || w(i, "delete")
            || w(i, "merge")
            || (w(i, "update") && !w(i.wrapping_sub(1), "for"))
    });
    if first == "WITH" && dml {
        return Verdict::new(kind, true, Reason::WritableCte);
    }
    let simple_table = toks.len() >= 2
        && toks[1..]
            .iter()
            .all(|t| matches!(t.0, Tok::Word | Tok::QuotedIdent) || t.1 == ".");
    if first == "TABLE" && simple_table {
        let mut v = Verdict::new(kind, false, Reason::Read);
        v.tables.push(
            toks[1..]
                .iter()
                .filter(|t| !(t.0 == Tok::Word && t.1.eq_ignore_ascii_case("only")))
                .map(|t| match t.0 {
                    Tok::QuotedIdent => t.1.trim_matches('"').replace("\"\"", "\""),
                    _ => t.1.to_lowercase(),
                })
                .collect(),
        );
        return v;
    }
    Verdict::new(kind, true, Reason::ParseFailure)
}
