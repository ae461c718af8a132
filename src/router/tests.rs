//! Router-wide tests: the classification table (through `analyze` and through the cache,
//! i.e. on normalized text), and a no-panic test over random input for every entry point.

use super::*;
use StatementKind as K;

fn wf() -> Vec<String> {
    vec!["audit_log".to_string(), "app.bump".to_string()]
}

/// (sql, write, reason label, expected kind if checked)
#[rustfmt::skip]
const TABLE: &[(&str, bool, &str, Option<StatementKind>)] = &[
    // reads
    ("SELECT 1", false, "read", Some(K::Select)),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42", false, "read", Some(K::Select)),
    ("select * from t where a = $1 and b in (1, 2, 3)", false, "read", Some(K::Select)),
    ("VALUES (1, 'a'), (2, 'b')", false, "read", Some(K::Select)),
    ("TABLE t", false, "read", Some(K::Select)),
    ("TABLE ONLY public.t", false, "read", Some(K::Select)),
    ("SELECT 1 UNION ALL SELECT 2 ORDER BY 1 LIMIT 5 OFFSET 2", false, "read", Some(K::Select)),
    ("SHOW search_path", false, "read", Some(K::Show)),
    ("SHOW ALL", false, "read", Some(K::Show)),
    ("SHOW TRANSACTION ISOLATION LEVEL", false, "read", Some(K::Show)),
    ("EXPLAIN SELECT 1", false, "read", Some(K::Explain { analyze: false })),
    ("EXPLAIN DELETE FROM t", false, "read", Some(K::Explain { analyze: false })),
    ("EXPLAIN (ANALYZE false) SELECT nextval('s')", false, "read", Some(K::Explain { analyze: false })),
    ("EXPLAIN ANALYZE SELECT 1", false, "read", Some(K::Explain { analyze: true })),
    ("WITH x AS (SELECT 1) SELECT * FROM x", false, "read", Some(K::Select)),
    ("WITH RECURSIVE r(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", false, "read", None),
    ("WITH x AS MATERIALIZED (SELECT a FROM t WHERE b = 'q') SELECT * FROM x", false, "read", None),
    ("SELECT now(), random(), pg_is_in_recovery()", false, "read", None),
    ("SELECT pg_catalog.now(), current_timestamp, CURRENT_USER", false, "read", None),
    ("SELECT count(*), max(a) FROM t JOIN u ON t.id = u.id WHERE t.a IN (SELECT b FROM v)", false, "read", None),
    ("SELECT * FROM generate_series(1, 10) g", false, "read", None),
    ("SELECT my_func(1)", false, "read", None),
    ("SELECT DATE '2020-01-01', INTERVAL '1 day', x::numeric(10,2) FROM t", false, "read", None),
    ("SELECT E'a\\nb', $$x$$, B'0101', X'1F', 1.5e3, .5, -1", false, "read", None),
    ("COPY t TO STDOUT", false, "read", Some(K::Copy { from_stdin: false, to: true })),
    ("COPY (SELECT * FROM t WHERE a = 1) TO STDOUT WITH (FORMAT csv)", false, "read", None),
    ("DECLARE c CURSOR FOR SELECT * FROM t", false, "read", Some(K::Other)),
    ("FETCH 10 FROM c", false, "read", Some(K::Other)),
    ("", false, "read", Some(K::Other)),
    ("SELECT 1; SELECT 2", false, "read", Some(K::Select)),
    // DML
    ("INSERT INTO t VALUES (1, 'a')", true, "write_statement", Some(K::Insert)),
    ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", true, "write_statement", Some(K::Insert)),
    ("UPDATE t SET a = 1 WHERE b = 2 RETURNING *", true, "write_statement", Some(K::Update)),
    ("DELETE FROM t WHERE a = 1", true, "write_statement", Some(K::Delete)),
    ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", true, "write_statement", Some(K::Merge)),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", true, "write_statement", Some(K::Insert)),
    ("SELECT 1; DELETE FROM t", true, "write_statement", Some(K::Select)),
    ("EXPLAIN ANALYZE DELETE FROM t", true, "write_statement", Some(K::Explain { analyze: true })),
    // locking, into, writable CTEs
    ("SELECT * FROM t FOR UPDATE", true, "locking_clause", Some(K::Select)),
    ("SELECT * FROM t FOR SHARE OF t NOWAIT", true, "locking_clause", None),
    ("SELECT * FROM t FOR NO KEY UPDATE", true, "locking_clause", Some(K::Select)),
    ("SELECT * FROM t WHERE a = 1 FOR KEY SHARE SKIP LOCKED", true, "locking_clause", Some(K::Select)),
    ("SELECT (SELECT 1 FROM t FOR UPDATE)", true, "locking_clause", None),
    ("SELECT 1 INTO t2", true, "select_into", Some(K::Select)),
    ("SELECT * INTO TEMP t2 FROM t", true, "select_into", None),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", true, "writable_cte", Some(K::Select)),
    ("WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x", true, "writable_cte", None),
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING a) SELECT * FROM x", true, "writable_cte", None),
    // functions with side effects
    ("SELECT nextval('s')", true, "volatile_function", None),
    ("SELECT setval('s', 1)", true, "volatile_function", None),
    ("SELECT currval('s')", true, "volatile_function", None),
    ("SELECT lastval()", true, "volatile_function", None),
    ("SELECT pg_advisory_lock(1)", true, "volatile_function", None),
    ("SELECT pg_try_advisory_xact_lock(1, 2)", true, "volatile_function", None),
    ("SELECT pg_advisory_unlock_all()", true, "volatile_function", None),
    ("SELECT pg_notify('c', 'x')", true, "volatile_function", None),
    ("SELECT set_config('a.b', 'c', false)", true, "volatile_function", None),
    ("SELECT lo_import('/tmp/x'), lo_unlink(1)", true, "volatile_function", None),
    ("SELECT txid_current()", true, "volatile_function", None),
    ("SELECT pg_current_xact_id()", true, "volatile_function", None),
    ("SELECT pg_switch_wal()", true, "volatile_function", None),
    ("SELECT pg_create_restore_point('x')", true, "volatile_function", None),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", true, "volatile_function", None),
    ("SELECT pg_cancel_backend(1)", true, "volatile_function", None),
    ("SELECT pg_reload_conf()", true, "volatile_function", None),
    ("SELECT pg_stat_reset()", true, "volatile_function", None),
    ("SELECT pg_catalog.nextval('s')", true, "volatile_function", None),
    ("SELECT * FROM t WHERE id = nextval('s')", true, "volatile_function", None),
    ("SELECT a FROM t, LATERAL (SELECT nextval('s')) x", true, "volatile_function", None),
    ("SELECT * FROM pg_advisory_lock(1)", true, "volatile_function", None),
    ("SELECT audit_log(1)", true, "write_function", None),
    ("SELECT app.bump()", true, "write_function", None),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT nextval('s')", true, "volatile_function", Some(K::Explain { analyze: true })),
    ("COPY (SELECT nextval('s')) TO STDOUT", true, "volatile_function", None),
    // DDL
    ("CREATE TABLE t (a int PRIMARY KEY, b varchar(20) DEFAULT 'x')", true, "ddl", Some(K::Ddl)),
    ("CREATE TEMP TABLE t (a int)", true, "ddl", None),
    ("ALTER TABLE t ADD COLUMN c int", true, "ddl", None),
    ("DROP TABLE IF EXISTS t CASCADE", true, "ddl", None),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", true, "ddl", None),
    ("TRUNCATE t", true, "ddl", None),
    ("GRANT SELECT ON t TO u", true, "ddl", None),
    ("COMMENT ON TABLE t IS 'hello'", true, "ddl", None),
    ("CREATE SEQUENCE s START 1", true, "ddl", None),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY v", true, "ddl", Some(K::Ddl)),
    ("ALTER SYSTEM SET work_mem = '64MB'", true, "ddl", None),
    // COPY FROM
    ("COPY t FROM STDIN", true, "copy_from", Some(K::Copy { from_stdin: true, to: false })),
    ("COPY t (a, b) FROM '/tmp/x' WITH (FORMAT csv)", true, "copy_from", Some(K::Copy { from_stdin: false, to: false })),
    // utilities
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", true, "utility", Some(K::Utility)),
    ("CALL p(1)", true, "utility", Some(K::Utility)),
    ("DO $$ BEGIN PERFORM 1; END $$", true, "utility", Some(K::Utility)),
    ("DO LANGUAGE plpgsql $x$ BEGIN END $x$", true, "utility", None),
    ("VACUUM (VERBOSE) t", true, "utility", Some(K::Utility)),
    ("VACUUM t", true, "utility", None),
    ("ANALYZE t", true, "utility", None),
    ("REINDEX TABLE t", true, "utility", None),
    ("CLUSTER t USING i", true, "utility", None),
    ("CHECKPOINT", true, "utility", None),
    ("LISTEN c", true, "utility", None),
    ("NOTIFY c, 'x'", true, "utility", None),
    ("UNLISTEN *", true, "utility", None),
    ("PREPARE TRANSACTION 'x'", true, "utility", Some(K::Utility)),
    ("COMMIT PREPARED 'x'", true, "utility", Some(K::Utility)),
    ("ROLLBACK PREPARED 'x'", true, "utility", Some(K::Utility)),
    ("EXECUTE p(1)", true, "utility", Some(K::Execute)),
    ("SET x = 1; DO $$ $$", true, "utility", Some(K::Set)),
    // transactions and session statements
    ("BEGIN", false, "transaction_control", Some(K::Begin { read_only: None })),
    ("BEGIN READ ONLY", false, "transaction_control", Some(K::Begin { read_only: Some(true) })),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", false, "transaction_control", Some(K::Begin { read_only: Some(true) })),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ WRITE", false, "transaction_control", Some(K::Begin { read_only: Some(false) })),
    ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", false, "transaction_control", Some(K::Begin { read_only: Some(true) })),
    ("COMMIT", false, "transaction_control", Some(K::Commit)),
    ("END", false, "transaction_control", Some(K::Commit)),
    ("ROLLBACK", false, "transaction_control", Some(K::Rollback)),
    ("ABORT", false, "transaction_control", Some(K::Rollback)),
    ("SAVEPOINT a", false, "transaction_control", Some(K::Savepoint)),
    ("RELEASE SAVEPOINT a", false, "transaction_control", Some(K::Savepoint)),
    ("ROLLBACK TO SAVEPOINT a", false, "transaction_control", Some(K::Savepoint)),
    ("SET search_path = a, b", false, "session", Some(K::Set)),
    ("SET LOCAL statement_timeout = 5", false, "session", Some(K::Set)),
    ("SET SESSION application_name TO 'y'", false, "session", Some(K::Set)),
    ("SET TIME ZONE 'UTC'", false, "session", Some(K::Set)),
    ("RESET search_path", false, "session", Some(K::Reset)),
    ("RESET ALL", false, "session", Some(K::Reset)),
    ("DISCARD ALL", false, "session", Some(K::Discard)),
    ("DEALLOCATE p", false, "session", Some(K::Deallocate)),
    ("DEALLOCATE ALL", false, "session", Some(K::Deallocate)),
    ("PREPARE p (int) AS SELECT $1", false, "session", Some(K::Prepare)),
    ("SET TRANSACTION READ ONLY", false, "session", Some(K::SetTransaction { read_only: Some(true), session_default: false })),
    ("SET default_transaction_read_only = on", false, "session", Some(K::SetTransaction { read_only: Some(true), session_default: true })),
    ("SET default_transaction_read_only TO false", false, "session", Some(K::SetTransaction { read_only: Some(false), session_default: true })),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", false, "session", Some(K::SetTransaction { read_only: Some(false), session_default: true })),
    // garbage
    ("SELEC 1 FROM", true, "parse_failure", None),
    ("FOO BAR BAZ", true, "parse_failure", Some(K::Other)),
    ("SELECT * FROM t WHERE", true, "parse_failure", Some(K::Select)),
    ("'unterminated", true, "parse_failure", None),
];

#[test]
fn classification_table() {
    assert!(TABLE.len() >= 60);
    let wf = wf();
    let cache = AnalysisCache::new(1000);
    let mut failures = Vec::new();
    for &(sql, write, label, kind) in TABLE {
        let direct = analyze(sql, &wf);
        let (cached, _) = cache.get_or_analyze(sql, &wf);
        for (how, a) in [("analyze", &direct), ("cache", &*cached)] {
            let kind_ok = kind.is_none_or(|k| k == a.kind);
            if a.write != write || a.reason.label() != label || !kind_ok {
                failures.push(format!(
                    "{how}: {sql:?}: got write={} reason={} ({}) kind={:?}",
                    a.write,
                    a.reason.label(),
                    a.reason,
                    a.kind
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn analysis_details() {
    let wf = wf();
    let a = analyze(
        "SELECT my_func(1), Other.F2(x), \"Quoted\"(y), now() FROM s.t",
        &wf,
    );
    assert!(!a.write);
    assert_eq!(a.functions, ["my_func", "f2", "Quoted"]);
    assert_eq!(a.tables, ["s.t"]);
    assert_eq!(a.with_volatile(&[]), (false, Reason::Read));
    let (w, r) = a.with_volatile(&["f2".to_string()]);
    assert!(w);
    assert_eq!(r, Reason::VolatileFunction("f2".into()));
    assert_eq!(r.to_string(), "volatile function f2");

    let a = analyze("SELECT my_func(1)", &wf);
    assert_eq!(a.functions, ["my_func"]);
    assert!(!a.parse_failed && !a.multi_statement && a.statements.len() == 1);

    let a = analyze(
        "WITH x AS (SELECT * FROM Orders) SELECT * FROM x JOIN public.items i ON true",
        &wf,
    );
    assert_eq!(a.tables, ["orders", "public.items"]);

    // writes carry no function candidates
    let a = analyze("INSERT INTO t VALUES (my_func(1))", &wf);
    assert!(a.write && a.functions.is_empty());
    assert_eq!(a.tables, ["t"]);

    let a = analyze("SELECT 1; SELECT 2", &wf);
    assert!(a.multi_statement && a.statements.len() == 2);

    let a = analyze("DO $$ BEGIN END $$", &wf);
    assert!(a.parse_failed && a.statements.is_empty());
    assert_eq!(a.reason, Reason::Utility("DO"));
    assert_eq!(a.reason.to_string(), "utility DO");

    let a = analyze("VACUUM (VERBOSE) t; SELECT 1", &wf);
    assert!(a.write && a.multi_statement && a.parse_failed);
    assert_eq!(a.reason, Reason::Utility("VACUUM"));

    // keyword fallback for transaction statements sqlparser rejects
    let a = analyze(
        "BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY, BOGUS",
        &wf,
    );
    assert!(a.parse_failed && !a.write);
    assert_eq!(
        a.kind,
        K::Begin {
            read_only: Some(true)
        }
    );
    let a = analyze("BEGIN ISOLATION LEVEL READ COMMITTED BOGUS", &wf);
    assert_eq!(a.kind, K::Begin { read_only: None });
    let a = analyze("SET TRANSACTION READ WRITE BOGUS", &wf);
    assert_eq!(
        a.kind,
        K::SetTransaction {
            read_only: Some(false),
            session_default: false
        }
    );
}

#[test]
fn reason_labels_and_display() {
    let all = [
        (Reason::Read, "read"),
        (Reason::TransactionControl, "transaction_control"),
        (Reason::Session, "session"),
        (Reason::WriteStatement("INSERT"), "write_statement"),
        (Reason::LockingClause, "locking_clause"),
        (Reason::VolatileFunction("f".into()), "volatile_function"),
        (Reason::WriteFunction("f".into()), "write_function"),
        (Reason::WritableCte, "writable_cte"),
        (Reason::SelectInto, "select_into"),
        (Reason::Ddl, "ddl"),
        (Reason::CopyFrom, "copy_from"),
        (Reason::Utility("LOCK"), "utility"),
        (Reason::ParseFailure, "parse_failure"),
        (Reason::Hint(RouteHint::Primary), "hint"),
        (Reason::SessionRoute, "session_route"),
    ];
    for (r, label) in all {
        assert_eq!(r.label(), label);
        assert!(!r.to_string().is_empty());
    }
    assert_eq!(
        Reason::WriteStatement("INSERT").to_string(),
        "write statement (INSERT)"
    );
}

/// xorshift64*: a tiny deterministic PRNG for the no-panic test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_input_never_panics() {
    const PARTS: &[&str] = &[
        "'",
        "''",
        "\"",
        "$$",
        "$a$",
        "$1",
        "$10001",
        "E'",
        "e'\\",
        "\\",
        "B'",
        "X'",
        "U&'",
        "N'",
        "/*",
        "*/",
        "--",
        "\n",
        " ",
        ";",
        "(",
        ")",
        "::",
        ".",
        ",",
        "=",
        "-",
        "1",
        "1.5e",
        "0x",
        "_",
        ".5",
        "é",
        "\u{0}",
        "SELECT",
        "FROM",
        "t",
        "WHERE",
        "FOR",
        "UPDATE",
        "NO",
        "KEY",
        "SHARE",
        "WITH",
        "AS",
        "numeric",
        "DATE",
        "SET",
        "TABLE",
        "INSERT",
        "DELETE",
        "COPY",
        "STDIN",
        "TO",
        "DO",
        "VACUUM",
        "BEGIN",
        "READ",
        "ONLY",
        "EXPLAIN",
        "ROUTE",
        "ANALYZE",
        "nextval",
        "pgvane.route",
        "pgvane:",
        "primary",
        "max_lag=",
        "shard=",
        "sharding_key=",
        "'x'",
        "RESET",
        "SHOW",
        "pgvane.shard",
        "/* pgvane: replica */",
        "-- pgvane: primary\n",
        "PREPARE",
        "TRANSACTION",
        "*",
    ];
    let cache = AnalysisCache::new(64);
    let wf = wf();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..6000 {
        let s = if round % 3 == 0 {
            let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            let mut s = String::new();
            for _ in 0..rng.below(24) {
                s.push_str(PARTS[rng.below(PARTS.len())]);
                if rng.below(3) == 0 {
                    s.push(' ');
                }
            }
            s
        };
        let n = normalize(&s);
        for lit in &n.literals {
            assert!(s.get(lit.range.clone()).is_some(), "bad range in {s:?}");
        }
        assert_eq!(normalize(&n.key).key, n.key, "not idempotent: {s:?}");
        let _ = parse_hints(&s);
        let _ = pgvane_command(&s);
        let (a, _) = cache.get_or_analyze(&s, &wf);
        if a.parse_failed {
            assert!(a.write || !matches!(a.reason, Reason::ParseFailure));
        }
    }
    // pathological nesting and size
    for s in [
        "(".repeat(100_000),
        format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)),
        format!("SELECT {}", "1 + ".repeat(20_000)),
        "/*".repeat(10_000),
        "'".repeat(10_001),
    ] {
        let _ = normalize(&s);
        let _ = parse_hints(&s);
        let _ = pgvane_command(&s);
        let _ = cache.get_or_analyze(&s, &wf);
    }
}
