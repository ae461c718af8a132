//! `cache_unnamed_statements`: the client's unnamed statement runs as the shared named
//! statement of its text. Every scenario runs directly against PostgreSQL and through pgvane
//! (transaction mode, pool of 1 server connection) with the option on and off, and must
//! answer exactly the same; with it on, the server must hold the shared statement (that is
//! the point: it skips parse and analysis next time).

mod common;

use std::time::Duration;

use common::wire::{self, Msg, Wire};
use common::*;

const USER: &str = "trustuser";

fn setup_db(db: &str) {
    let pg = shared();
    pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    pg.psql("postgres", &format!("CREATE DATABASE {db} OWNER {USER}"));
}

fn start(db: &str, cache: bool) -> Pgvane {
    let pg = shared();
    Pgvane::start(&format!(
        r#"
[general]
listen_addr = "127.0.0.1:{}"
pool_mode = "transaction"
auth_type = "trust"
default_pool_size = 1
query_wait_timeout = "5s"
cache_unnamed_statements = {cache}

[[users]]
name = "{USER}"

[[databases]]
name = "{db}"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {}, dbname = "{db}" }}
"#,
        free_port(),
        pg.port()
    ))
}

/// Message tags, then the SQLSTATE of an error or the data rows' first values.
fn answer(msgs: &[Msg]) -> String {
    let mut s = wire::tags(msgs);
    for m in msgs {
        match m.tag {
            b'E' => s += &format!(" {}", m.code().unwrap_or_default()),
            b'D' => s += &format!(" {}", m.first_value().unwrap_or_else(|| "NULL".into())),
            // A RowDescription's first column type OID.
            b'T' => {
                let b = &m.body;
                let name_end = b[2..].iter().position(|&c| c == 0).map_or(0, |p| p + 2);
                let at = name_end + 1 + 4 + 2;
                if let Some(oid) = b.get(at..at + 4) {
                    s += &format!(
                        " oid={}",
                        u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]])
                    );
                }
            }
            _ => {}
        }
    }
    s
}

fn batch(w: &mut Wire, msgs: &[Vec<u8>]) -> String {
    let mut all = msgs.to_vec();
    all.push(wire::sync());
    w.send_all(&all);
    answer(&w.until_ready(Duration::from_secs(10)))
}

/// Parse/Bind/Describe portal/Execute of the unnamed statement, as pgbench -M extended and
/// most drivers send it.
fn run_unnamed(w: &mut Wire, sql: &str, params: &[Option<&str>]) -> String {
    batch(
        w,
        &[
            wire::parse("", sql),
            wire::bind("", "", params),
            wire::describe(b'P', ""),
            wire::execute("", 0),
        ],
    )
}

fn scenario(port: u16, db: &str) -> Vec<String> {
    let mut w = Wire::login(port, USER, db);
    let mut out = Vec::new();
    w.simple("DROP TABLE IF EXISTS uc");
    w.simple("CREATE TABLE uc(a integer)");
    w.simple("INSERT INTO uc VALUES (7)");
    // The same text twice, in two transactions.
    for v in ["20", "21"] {
        out.push(run_unnamed(&mut w, "SELECT $1::int * 2", &[Some(v)]));
    }
    out.push(run_unnamed(&mut w, "SELECT $1::int * 2", &[None]));
    // A new shape after a schema change: an unnamed Parse always sees the table as it is.
    out.push(run_unnamed(&mut w, "SELECT a FROM uc", &[]));
    w.simple("ALTER TABLE uc ALTER COLUMN a TYPE text");
    out.push(run_unnamed(&mut w, "SELECT a FROM uc", &[]));
    // Parse in one batch, Bind in the next: the unnamed statement lasts.
    out.push(batch(&mut w, &[wire::parse("", "SELECT 'kept'::text")]));
    out.push(batch(
        &mut w,
        &[wire::bind("", "", &[]), wire::execute("", 0)],
    ));
    // Describe of the statement.
    out.push(batch(&mut w, &[wire::describe(b'S', "")]));
    // A simple Query destroys it (PostgreSQL: 26000).
    w.simple("SELECT 1");
    out.push(batch(
        &mut w,
        &[wire::bind("", "", &[]), wire::execute("", 0)],
    ));
    // Close destroys it too.
    out.push(batch(&mut w, &[wire::parse("", "SELECT 5")]));
    out.push(batch(&mut w, &[wire::close(b'S', "")]));
    out.push(batch(
        &mut w,
        &[wire::bind("", "", &[]), wire::execute("", 0)],
    ));
    // A Parse that fails, then a good one.
    out.push(run_unnamed(&mut w, "SELEC 1", &[]));
    out.push(run_unnamed(&mut w, "SELECT 6", &[]));
    // A run-time error, then the same text again.
    out.push(run_unnamed(&mut w, "SELECT 1 / $1::int", &[Some("0")]));
    out.push(run_unnamed(&mut w, "SELECT 1 / $1::int", &[Some("1")]));
    // Declared parameter types are part of the statement.
    out.push(batch(
        &mut w,
        &[
            wire::parse_typed("", "SELECT $1", &[20]),
            wire::bind("", "", &[Some("9000000000")]),
            wire::describe(b'P', ""),
            wire::execute("", 0),
        ],
    ));
    // Inside a transaction block, twice.
    w.simple("BEGIN");
    out.push(run_unnamed(&mut w, "SELECT count(*) FROM uc", &[]));
    out.push(run_unnamed(&mut w, "SELECT count(*) FROM uc", &[]));
    w.simple("COMMIT");
    out
}

/// How many statements with this text the (only) server connection holds.
fn held(port: u16, db: &str, text: &str) -> String {
    let mut w = Wire::login(port, USER, db);
    let v = w.simple(&format!(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement = '{text}'"
    ));
    v.first().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_answer_the_same_with_and_without_the_cache() {
    setup_db("unnamed_cache1");
    let direct = scenario(shared().port(), "unnamed_cache1");
    assert_eq!(direct[0], "12TDCZ oid=23 40", "PostgreSQL's answer");
    assert_eq!(direct[4], "12TDCZ oid=25 7");
    assert_eq!(direct[8], "EZ 26000");
    for cache in [false, true] {
        let p = start("unnamed_cache1", cache);
        let got = scenario(p.port(), "unnamed_cache1");
        assert_eq!(
            got,
            direct,
            "cache_unnamed_statements = {cache}\n{}",
            p.log()
        );
        assert_eq!(
            held(p.port(), "unnamed_cache1", "SELECT $1::int * 2"),
            if cache { "1" } else { "0" },
            "cache_unnamed_statements = {cache}: the server holds the shared statement"
        );
    }
}

/// Two clients on one server connection, each with its own unnamed statement in flight:
/// each binds its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_binds_its_own_unnamed_statement() {
    setup_db("unnamed_cache2");
    let p = start("unnamed_cache2", true);
    let mut a = Wire::login(p.port(), USER, "unnamed_cache2");
    let mut b = Wire::login(p.port(), USER, "unnamed_cache2");
    assert_eq!(batch(&mut a, &[wire::parse("", "SELECT 'a'::text")]), "1Z");
    assert_eq!(batch(&mut b, &[wire::parse("", "SELECT 'b'::text")]), "1Z");
    for _ in 0..2 {
        assert_eq!(
            batch(&mut a, &[wire::bind("", "", &[]), wire::execute("", 0)]),
            "2DCZ a"
        );
        assert_eq!(
            batch(&mut b, &[wire::bind("", "", &[]), wire::execute("", 0)]),
            "2DCZ b"
        );
    }
    // A client that never parsed one gets PostgreSQL's error, not another client's: also
    // without the cache, where the server's unnamed statement is the last client's.
    for cache in [true, false] {
        let p = start("unnamed_cache2", cache);
        let mut a = Wire::login(p.port(), USER, "unnamed_cache2");
        assert_eq!(
            run_unnamed(&mut a, "SELECT 'secret'::text", &[]),
            "12TDCZ oid=25 secret"
        );
        let mut c = Wire::login(p.port(), USER, "unnamed_cache2");
        assert_eq!(
            batch(&mut c, &[wire::bind("", "", &[]), wire::execute("", 0)]),
            "EZ 26000",
            "cache_unnamed_statements = {cache}"
        );
    }
}
