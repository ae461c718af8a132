//! Named prepared statements across a schema change that alters their result type, through
//! transaction pooling's shared statements, answer exactly as PostgreSQL does: a statement
//! parsed before the change fails with 0A000 "cached plan must not change result type"; one
//! parsed after it just works with the new type. pgvane answers Parses from servers'
//! existing statements, so it must never fail the second kind, and never hand the first
//! kind rows of a shape it was not told (a fresh server connection prepares the statement
//! with the new shape and would run it without complaint). Each scenario runs directly
//! against PostgreSQL and through pgvane (pool of 1 server connection) and must answer the
//! same.

mod common;

use std::time::Duration;

use common::wire::{self, Msg, Wire};
use common::*;

const USER: &str = "trustuser";

fn setup_db(name: &str) {
    let pg = shared();
    pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
    pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER {USER}"));
}

fn start(db: &str) -> Pgvane {
    let pg = shared();
    Pgvane::start(&format!(
        r#"
[general]
listen_addr = "127.0.0.1:{}"
pool_mode = "transaction"
auth_type = "trust"
default_pool_size = 1
query_wait_timeout = "5s"

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

async fn client(port: u16, db: &str) -> tokio_postgres::Client {
    connect(&format!(
        "host=127.0.0.1 port={port} user={USER} dbname={db}"
    ))
    .await
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

/// What a query gave: its first value as text, or the SQLSTATE (or a client-side error).
async fn outcome(c: &tokio_postgres::Client, st: &tokio_postgres::Statement) -> String {
    match c.query(st, &[]).await {
        Ok(rows) => match rows.first().map(|r| r.try_get::<_, String>(0)) {
            Some(Ok(v)) => format!("value {v}"),
            Some(Err(e)) => format!("undecodable row: {e}"),
            None => "no row".into(),
        },
        Err(e) => format!("error {}", code(&e)),
    }
}

/// tokio-postgres (describes at prepare, then decodes rows by that description): a
/// statement prepared after the change while the server still holds the old plan works; the
/// one prepared before fails.
async fn prepared_before_and_after(port: u16, db: &str) -> Vec<String> {
    let c = client(port, db).await;
    c.batch_execute(
        "DROP TABLE IF EXISTS shape_a; CREATE TABLE shape_a(a int); INSERT INTO shape_a VALUES (7)",
    )
    .await
    .unwrap();
    let before = c.prepare("SELECT a FROM shape_a").await.unwrap();
    let first = match c.query(&before, &[]).await {
        Ok(rows) => format!("int {}", rows[0].get::<_, i32>(0)),
        Err(e) => format!("error {}", code(&e)),
    };
    c.batch_execute("ALTER TABLE shape_a ALTER COLUMN a TYPE text")
        .await
        .unwrap();
    let after = match c.prepare("SELECT a FROM shape_a").await {
        Ok(st) => st,
        Err(e) => {
            return vec![
                first,
                format!("prepare after the change: error {}", code(&e)),
            ]
        }
    };
    vec![
        first,
        outcome(&c, &after).await,
        outcome(&c, &before).await,
        outcome(&c, &after).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_after_a_result_type_change_works_and_one_before_fails() {
    setup_db("shape1");
    let direct = prepared_before_and_after(shared().port(), "shape1").await;
    assert_eq!(
        direct,
        ["int 7", "value 7", "error 0A000", "value 7"],
        "PostgreSQL's answers"
    );
    let p = start("shape1");
    let through = prepared_before_and_after(p.port(), "shape1").await;
    assert_eq!(through, direct, "through pgvane\n{}", p.log());
}

/// The statement described before the change meets a server that prepares it afresh (the
/// server's statements were deallocated, as after a new server connection): PostgreSQL
/// fails it; running it would return text rows to a client decoding int4.
async fn described_then_fresh_server(port: u16, db: &str, other_port: u16) -> Vec<String> {
    let c = client(port, db).await;
    c.batch_execute(
        "DROP TABLE IF EXISTS shape_b; CREATE TABLE shape_b(a int); INSERT INTO shape_b VALUES (5)",
    )
    .await
    .unwrap();
    let st = c.prepare("SELECT a FROM shape_b").await.unwrap();
    let first = match c.query(&st, &[]).await {
        Ok(rows) => format!("int {}", rows[0].get::<_, i32>(0)),
        Err(e) => format!("error {}", code(&e)),
    };
    // Another client changes the type and clears the (shared) server's statements.
    let other = client(other_port, db).await;
    other
        .batch_execute("ALTER TABLE shape_b ALTER COLUMN a TYPE text; DEALLOCATE ALL")
        .await
        .unwrap();
    drop(other);
    let stale = match c.query(&st, &[]).await {
        Ok(rows) => match rows[0].try_get::<_, i32>(0) {
            Ok(v) => format!("int {v}"),
            Err(e) => format!("rows of another type: {e}"),
        },
        Err(e) => format!("error {}", code(&e)),
    };
    let again = c.prepare("SELECT a FROM shape_b").await.unwrap();
    vec![first, stale, outcome(&c, &again).await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_described_before_the_change_fails_on_a_server_that_prepares_it_afresh() {
    setup_db("shape2");
    let pg = shared().port();
    let direct = described_then_fresh_server(pg, "shape2", pg).await;
    assert_eq!(
        direct,
        ["int 5", "error 0A000", "value 5"],
        "PostgreSQL's answers"
    );
    let p = start("shape2");
    let through = described_then_fresh_server(p.port(), "shape2", p.port()).await;
    assert_eq!(through, direct, "through pgvane\n{}", p.log());
}

/// node-postgres' habit: a named Parse, then Bind, Describe portal, Execute, Sync (it never
/// describes the statement). Two names with one text, the table recreated with another
/// column type between them (its type-coercion tests).
fn two_names_one_text(port: u16, db: &str) -> Vec<String> {
    let mut w = Wire::login(port, USER, db);
    w.simple("DROP TABLE IF EXISTS shape_c");
    w.simple("CREATE TABLE shape_c(col integer)");
    w.simple("INSERT INTO shape_c VALUES (3)");
    let run = |w: &mut Wire, name: &str| -> String {
        w.send_all(&[
            wire::parse(name, "SELECT col FROM shape_c"),
            wire::bind("", name, &[]),
            wire::describe(b'P', ""),
            wire::execute("", 0),
            wire::sync(),
        ]);
        let msgs: Vec<Msg> = w.until_ready(Duration::from_secs(10));
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            return format!("{} {}", wire::tags(&msgs), e.code().unwrap_or_default());
        }
        let v = msgs
            .iter()
            .find(|m| m.tag == b'D')
            .and_then(|m| m.first_value());
        format!("{} {}", wire::tags(&msgs), v.unwrap_or_default())
    };
    let a = run(&mut w, "get a");
    w.simple("DROP TABLE shape_c");
    w.simple("CREATE TABLE shape_c(col smallint)");
    w.simple("INSERT INTO shape_c VALUES (4)");
    let b = run(&mut w, "get b");
    // Used before the change: fails, as PostgreSQL fails it (Bind: 2 is never sent).
    w.send_all(&[
        wire::bind("", "get a", &[]),
        wire::describe(b'P', ""),
        wire::execute("", 0),
        wire::sync(),
    ]);
    let msgs = w.until_ready(Duration::from_secs(10));
    let a_again = format!(
        "{} {}",
        wire::tags(&msgs),
        msgs.iter()
            .find_map(|m| if m.tag == b'E' { m.code() } else { None })
            .unwrap_or_default()
    );
    vec![a, b, a_again]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_name_for_the_same_text_after_the_table_changed_works() {
    setup_db("shape3");
    let direct = two_names_one_text(shared().port(), "shape3");
    assert_eq!(
        direct,
        ["12TDCZ 3", "12TDCZ 4", "EZ 0A000"],
        "PostgreSQL's answers"
    );
    let p = start("shape3");
    let through = two_names_one_text(p.port(), "shape3");
    assert_eq!(through, direct, "through pgvane\n{}", p.log());
}

/// asyncpg's habit: prepare with Parse, Describe, Flush (its Sync comes after the answer),
/// and a domain dropped and created again (a new type OID) between two clients' prepares.
fn prepare_after_type_recreated(port: u16, db: &str) -> Vec<String> {
    let prepare = |w: &mut Wire, name: &str| -> String {
        w.send_all(&[
            wire::parse(name, "SELECT $1::shape_d"),
            wire::describe(b'S', name),
            wire::flush(),
        ]);
        let mut got = Vec::new();
        while let Some(m) = w.recv(Duration::from_secs(5)) {
            let end = matches!(m.tag, b'T' | b'n' | b'E');
            got.push(m);
            if end {
                break;
            }
        }
        w.send(&wire::sync());
        got.extend(w.until_ready(Duration::from_secs(10)));
        let param = got
            .iter()
            .find(|m| m.tag == b't')
            .map(|m| u32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]));
        let err = got
            .iter()
            .find_map(|m| if m.tag == b'E' { m.code() } else { None });
        let typ = param.map(|oid| {
            let mut q = Wire::login(port, USER, db);
            q.simple(&format!("SELECT typname FROM pg_type WHERE oid = {oid}"))
                .join(",")
        });
        format!(
            "{} param {} {}",
            wire::tags(&got),
            typ.unwrap_or_default(),
            err.unwrap_or_default()
        )
    };
    let mut a = Wire::login(port, USER, db);
    a.simple("DROP DOMAIN IF EXISTS shape_d");
    a.simple("CREATE DOMAIN shape_d AS int");
    let first = prepare(&mut a, "a1");
    a.simple("DROP DOMAIN shape_d");
    a.simple("CREATE DOMAIN shape_d AS int");
    drop(a);
    let mut b = Wire::login(port, USER, db);
    vec![first, prepare(&mut b, "b1")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_after_a_type_was_created_again_sees_the_new_type() {
    setup_db("shape4");
    let direct = prepare_after_type_recreated(shared().port(), "shape4");
    assert_eq!(
        direct,
        ["1tTZ param shape_d ", "1tTZ param shape_d "],
        "PostgreSQL's answers"
    );
    let p = start("shape4");
    let through = prepare_after_type_recreated(p.port(), "shape4");
    assert_eq!(through, direct, "through pgvane\n{}", p.log());
}

/// The unnamed statement lives until the client's next Parse of it or simple Query, across
/// transactions (asyncpg introspects types between its Describe and Bind). Another client's
/// simple query on the shared server destroys the server's copy; the client must not notice.
fn unnamed_across_transactions(port: u16, db: &str) -> String {
    let mut a = Wire::login(port, USER, db);
    let mut b = Wire::login(port, USER, db);
    a.send_all(&[
        wire::parse("", "SELECT 41 + 1"),
        wire::describe(b'S', ""),
        wire::sync(),
    ]);
    let prep = wire::tags(&a.until_ready(Duration::from_secs(10)));
    b.simple("SELECT 1");
    a.send_all(&[wire::bind("", "", &[]), wire::execute("", 0), wire::sync()]);
    let run = a.until_ready(Duration::from_secs(10));
    let v = run
        .iter()
        .find(|m| m.tag == b'D')
        .and_then(|m| m.first_value());
    format!("{prep} {} {}", wire::tags(&run), v.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_survives_another_clients_query_on_the_server() {
    setup_db("shape5");
    let direct = unnamed_across_transactions(shared().port(), "shape5");
    assert_eq!(direct, "1tTZ 2DCZ 42", "PostgreSQL's answers");
    let p = start("shape5");
    assert_eq!(
        unnamed_across_transactions(p.port(), "shape5"),
        direct,
        "through pgvane\n{}",
        p.log()
    );
}

/// A batch whose earlier message fails makes the server skip what pgvane added behind it
/// (a Close and Parse of the shared copy, for a first Describe): its cache of the server's
/// statements must stay right, or the next Parse of that copy fails with 42P05 (found by
/// the network fuzz: "prepared statement already exists").
fn skipped_fresh_parse(port: u16, db: &str) -> Vec<String> {
    let mut a = Wire::login(port, USER, db);
    let mut b = Wire::login(port, USER, db);
    let run = |w: &mut Wire, msgs: &[Vec<u8>]| -> String {
        w.send_all(msgs);
        let got = w.until_ready(Duration::from_secs(10));
        let codes: Vec<String> = got.iter().filter_map(|m| m.code()).collect();
        format!("{} {}", wire::tags(&got), codes.join(","))
    };
    let text = "SELECT 5 AS five";
    let first = run(
        &mut a,
        &[
            wire::parse("a", text),
            wire::describe(b'S', "a"),
            wire::sync(),
        ],
    );
    let failed = run(
        &mut b,
        &[
            wire::parse("b", text),
            wire::bind("", "no_such_statement", &[]),
            wire::describe(b'S', "b"),
            wire::sync(),
        ],
    );
    let after = run(
        &mut b,
        &[
            wire::describe(b'S', "b"),
            wire::bind("", "b", &[]),
            wire::execute("", 0),
            wire::sync(),
        ],
    );
    let other = run(
        &mut a,
        &[wire::bind("", "a", &[]), wire::execute("", 0), wire::sync()],
    );
    vec![first, failed, after, other]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_leaves_the_servers_statements_known() {
    setup_db("shape6");
    let direct = skipped_fresh_parse(shared().port(), "shape6");
    assert_eq!(
        direct,
        ["1tTZ ", "1EZ 26000", "tT2DCZ ", "2DCZ "],
        "PostgreSQL's answers"
    );
    let p = start("shape6");
    assert_eq!(
        skipped_fresh_parse(p.port(), "shape6"),
        direct,
        "through pgvane\n{}",
        p.log()
    );
}
