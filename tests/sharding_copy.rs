//! COPY on a sharded database, against real PostgreSQL (two shards as two databases of one
//! server): `COPY ... FROM STDIN` splits rows by the sharding key (placement checked with
//! PostgreSQL's own satisfies_hash_partition) and commits on every shard or none;
//! `COPY ... TO STDOUT` fans out; everything else gets a clear error and never holds a server.

mod common;
mod raw_client;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use raw_client::{error_of, tags, Raw};

fn config(listen: u16, shards: &[(u16, String)], pool: u32) -> String {
    let mut s = format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
default_pool_size = {pool}
auth_type = "trust"

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "shop"
"#
    );
    for (port, db) in shards {
        s.push_str(&format!(
            "  [[databases.shards]]\n  primary = {{ host = \"127.0.0.1\", port = {port}, dbname = \"{db}\" }}\n"
        ));
    }
    s.push_str(
        r#"  [[databases.sharded_tables]]
  table = "orders"
  column = "customer_id"
  type = "bigint"
  [[databases.sharded_tables]]
  table = "accounts"
  column = "email"
  type = "text"
"#,
    );
    s
}

fn shard_dbs(pg: &PgServer, prefix: &str, n: usize) -> Vec<(u16, String)> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}_{i}");
            pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
            pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
            (pg.port(), name)
        })
        .collect()
}

fn direct(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app-secret dbname={db}")
}

/// psql through pgvane with `input` on stdin; a hang is killed after 30 s and fails.
fn psql_stdin(port: u16, sql: &str, input: &[u8]) -> (bool, String, String) {
    let mut child = psql_cmd(port, "app", "shop", None)
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("psql hung on {sql:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = writer.join();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A count; through pgvane a fan-out answers one count per shard, summed here.
async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .sum()
}

/// Create the schema through pgvane (broadcast) plus a hash-partitioned twin on each shard
/// for satisfies_hash_partition.
async fn setup(p: &Pgvane, shards: &[(u16, String)]) -> tokio_postgres::Client {
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=app dbname=shop",
        p.port()
    ))
    .await;
    c.batch_execute(
        "CREATE TABLE orders(customer_id bigint NOT NULL, id bigint, note text, PRIMARY KEY (customer_id, id));
         CREATE TABLE accounts(email text NOT NULL, n int);
         CREATE TABLE countries(code text PRIMARY KEY, name text)",
    )
    .await
    .unwrap();
    let n = shards.len();
    let parts: String = (0..n)
        .map(|i| format!("CREATE TABLE hp_{i} PARTITION OF hp FOR VALUES WITH (MODULUS {n}, REMAINDER {i}); CREATE TABLE hpt_{i} PARTITION OF hpt FOR VALUES WITH (MODULUS {n}, REMAINDER {i});"))
        .collect();
    c.batch_execute(&format!(
        "CREATE TABLE hp(k bigint) PARTITION BY HASH (k); CREATE TABLE hpt(k text) PARTITION BY HASH (k); {parts}"
    ))
    .await
    .unwrap();
    c
}

/// Rows on each shard that another partition would own (must be 0), and the row counts.
async fn placement(shards: &[(u16, String)], table: &str, col: &str, twin: &str) -> Vec<i64> {
    let n = shards.len();
    let mut counts = Vec::new();
    for (i, (port, db)) in shards.iter().enumerate() {
        let d = connect(&direct(*port, db)).await;
        let wrong = count(
            &d,
            &format!("SELECT count(*) FROM {table} WHERE NOT satisfies_hash_partition('{twin}'::regclass, {n}, {i}, {col})"),
        )
        .await;
        assert_eq!(wrong, 0, "shard {i} holds {table} rows another shard owns");
        counts.push(count(&d, &format!("SELECT count(*) FROM {table}")).await);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_splits_rows_and_copy_to_fans_out() {
    let shards = shard_dbs(shared(), "cp", 2);
    let p = Pgvane::start(&config(free_port(), &shards, 3));
    let c = setup(&p, &shards).await;

    // Text format with escapes and NULLs, no column list (the table's column order).
    let mut text = String::new();
    for k in 0..1000i64 {
        let note = match k % 4 {
            0 => "\\N".to_string(),
            1 => format!("tab\\there {k}"),
            2 => format!("back\\\\slash {k}"),
            _ => format!("plain {k}"),
        };
        text.push_str(&format!("{}\t{k}\t{note}\n", k * 7919 - 3_000_000));
    }
    let (ok, out, err) = psql_stdin(p.port(), "COPY orders FROM STDIN", text.as_bytes());
    assert!(ok, "COPY failed: {err}");
    assert_eq!(out.trim(), "COPY 1000");
    let counts = placement(&shards, "orders", "customer_id", "hp").await;
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    assert_eq!(counts.iter().sum::<i64>(), 1000);
    let k = 5i64;
    let r = c
        .query_one(
            "SELECT note FROM orders WHERE customer_id = $1",
            &[&(k * 7919 - 3_000_000)],
        )
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, Option<String>>(0).as_deref(),
        Some("tab\there 5")
    );
    let r = c
        .query_one("SELECT note FROM orders WHERE customer_id = -3000000", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, Option<String>>(0), None, "\\N is NULL");

    // CSV with header, another delimiter, a column list with the key second, quoted fields
    // holding the delimiter, quotes and a newline.
    let mut csv = String::from("id;customer_id;note\n");
    for k in 1000..1500i64 {
        csv.push_str(&format!(
            "{k};{};\"a;b \"\"q\"\"\nline2 {k}\"\n",
            k * 7919 - 3_000_000
        ));
    }
    let (ok, out, err) = psql_stdin(
        p.port(),
        "COPY orders (id, customer_id, note) FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';')",
        csv.as_bytes(),
    );
    assert!(ok, "CSV COPY failed: {err}");
    assert_eq!(out.trim(), "COPY 500");
    let counts = placement(&shards, "orders", "customer_id", "hp").await;
    assert_eq!(counts.iter().sum::<i64>(), 1500);
    let r = c
        .query_one(
            "SELECT note FROM orders WHERE customer_id = $1",
            &[&(1200i64 * 7919 - 3_000_000)],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "a;b \"q\"\nline2 1200");

    // Legacy syntax, text key, quoted keys.
    let mut acc = String::new();
    for k in 0..300 {
        acc.push_str(&format!("\"user{k}@example.com\",{k}\n"));
    }
    let (ok, out, err) = psql_stdin(p.port(), "COPY accounts FROM STDIN CSV", acc.as_bytes());
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 300");
    let counts = placement(&shards, "accounts", "email", "hpt").await;
    assert_eq!(counts.iter().sum::<i64>(), 300);
    assert!(counts.iter().all(|&c| c > 0));

    // A reference (unsharded) table: every shard gets every row; the count is PostgreSQL's.
    let (ok, out, err) = psql_stdin(
        p.port(),
        "COPY countries FROM STDIN",
        b"de\tGermany\nfr\tFrance\nit\tItaly\n",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 3");
    for (port, db) in &shards {
        let d = connect(&direct(*port, db)).await;
        assert_eq!(count(&d, "SELECT count(*) FROM countries").await, 3, "{db}");
    }

    // COPY TO STDOUT: one CopyOutResponse, every shard's rows, one CopyDone, "COPY <total>".
    let mut r = Raw::connect(p.port(), "app", "shop");
    r.query("COPY orders TO STDOUT");
    let msgs = r.until_ready();
    let t = tags(&msgs);
    assert!(
        t.starts_with('H') && t.ends_with("cCZ"),
        "one CopyOutResponse, one CopyDone: {}",
        &t[t.len().saturating_sub(10)..]
    );
    assert_eq!(t.matches('H').count(), 1);
    assert_eq!(t.matches('c').count(), 1);
    let data = msgs.iter().filter(|m| m.tag == b'd').count();
    assert_eq!(data, 1500);
    let cc = msgs.iter().find(|m| m.tag == b'C').unwrap();
    assert_eq!(cc.tag_text(), "COPY 1500");

    // CSV HEADER: the header once.
    r.query("COPY orders TO STDOUT WITH (FORMAT csv, HEADER)");
    let msgs = r.until_ready();
    let lines: Vec<String> = msgs
        .iter()
        .filter(|m| m.tag == b'd')
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert_eq!(lines[0], "customer_id,id,note\n");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("customer_id"))
            .count(),
        1
    );
    assert_eq!(lines.len(), 1501);
    assert_eq!(
        msgs.iter().find(|m| m.tag == b'C').unwrap().tag_text(),
        "COPY 1500"
    );

    // COPY (SELECT ...) TO STDOUT fans out too.
    r.query("COPY (SELECT id FROM orders WHERE id < 10 ORDER BY id) TO STDOUT");
    let msgs = r.until_ready();
    let mut ids: Vec<i64> = msgs
        .iter()
        .filter(|m| m.tag == b'd')
        .map(|m| String::from_utf8_lossy(&m.body).trim().parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!(
        msgs.iter().find(|m| m.tag == b'C').unwrap().tag_text(),
        "COPY 10"
    );

    // psql sees the same data as from one server.
    let out = psql_cmd(p.port(), "app", "shop", None)
        .args(["-c", "COPY accounts TO STDOUT"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 300);
}

/// Everything not supported or not valid: a clear error, never silence, never a held server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_errors_are_clear_and_release_servers() {
    let shards = shard_dbs(shared(), "cperr", 2);
    let p = Pgvane::start(&config(free_port(), &shards, 3));
    let c = setup(&p, &shards).await;
    let mut r = Raw::connect(p.port(), "app", "shop");

    // A key that does not parse: 22P02 like PostgreSQL; nothing committed anywhere.
    r.query("COPY orders FROM STDIN");
    let g = r.read_msg();
    assert_eq!(g.tag, b'G', "CopyInResponse");
    r.copy_data(b"1\t1\tok\n");
    r.copy_data(b"abc\t2\tbad key\n");
    r.copy_done();
    let msgs = r.until_ready();
    let e = error_of(&msgs).expect("an error");
    assert_eq!(e.code(), "22P02", "{}", e.message());
    assert!(e.message().contains("abc"), "{}", e.message());
    assert_eq!(count(&c, "SELECT count(*) FROM orders").await, 0);

    // A row without the key column.
    r.query("COPY orders (id, customer_id) FROM STDIN");
    assert_eq!(r.read_msg().tag, b'G');
    r.copy_data(b"1\n");
    r.copy_done();
    let msgs = r.until_ready();
    assert_eq!(error_of(&msgs).expect("an error").code(), "22P04");

    // Unsupported forms: 0A000 before any data.
    for sql in [
        "COPY orders (id, note) FROM STDIN",
        "COPY orders FROM '/tmp/pgvane-copy-test'",
        "COPY orders FROM PROGRAM 'cat /dev/null'",
    ] {
        r.query(sql);
        let msgs = r.until_ready();
        let e = error_of(&msgs).unwrap_or_else(|| panic!("no error for {sql}"));
        assert_eq!(e.code(), "0A000", "{sql}: {}", e.message());
    }

    // A row that fails on one shard (duplicate key): rolled back on every shard.
    c.batch_execute("INSERT INTO orders VALUES (7, 1, 'existing')")
        .await
        .unwrap();
    let mut rows = String::new();
    for k in 0..200 {
        rows.push_str(&format!("{}\t1\tnew\n", k + 100));
    }
    rows.push_str("7\t1\tduplicate\n");
    let (ok, _, err) = psql_stdin(p.port(), "COPY orders FROM STDIN", rows.as_bytes());
    assert!(!ok);
    assert!(err.contains("duplicate key"), "{err}");
    assert_eq!(count(&c, "SELECT count(*) FROM orders").await, 1);
    let counts = placement(&shards, "orders", "customer_id", "hp").await;
    assert_eq!(
        counts.iter().sum::<i64>(),
        1,
        "nothing of the failed COPY stayed"
    );

    // CopyFail from the client: PostgreSQL's error, nothing committed.
    r.query("COPY orders FROM STDIN");
    assert_eq!(r.read_msg().tag, b'G');
    r.copy_data(b"500\t1\tx\n501\t1\tx\n");
    r.copy_fail("client gave up");
    let msgs = r.until_ready();
    let e = error_of(&msgs).expect("an error");
    assert_eq!(e.code(), "57014");
    assert!(e.message().contains("client gave up"), "{}", e.message());
    assert_eq!(count(&c, "SELECT count(*) FROM orders").await, 1);

    // Binary COPY: a clear refusal.
    r.query("COPY orders FROM STDIN (FORMAT binary)");
    let msgs = r.until_ready();
    assert_eq!(error_of(&msgs).expect("an error").code(), "0A000");

    // Clients that disconnect in the middle of a COPY, many more than the pool holds.
    for i in 0..20 {
        let mut d = Raw::connect(p.port(), "app", "shop");
        d.query("COPY orders FROM STDIN");
        assert_eq!(d.read_msg().tag, b'G', "disconnect round {i}");
        d.copy_data(format!("{}\t9\thalf\n", 10_000 + i).as_bytes());
        drop(d);
    }
    // The pool serves again, and no shard keeps a backend in COPY or in a transaction.
    let n = tokio::time::timeout(
        Duration::from_secs(20),
        count(&c, "SELECT count(*) FROM orders"),
    )
    .await
    .expect("pool exhausted after disconnects");
    assert_eq!(n, 1, "no half COPY committed");
    for (port, db) in &shards {
        let d = connect(&direct(*port, db)).await;
        let mut left = -1;
        for _ in 0..100 {
            left = count(&d, &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND (query ILIKE 'COPY%' AND state <> 'idle' OR state LIKE 'idle in transaction%')")).await;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(left, 0, "{db} keeps a backend in COPY or in a transaction");
    }
    // After all that, COPY still works.
    let (ok, out, err) = psql_stdin(p.port(), "COPY orders FROM STDIN", b"42\t2\tafter\n");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "COPY 1");
}
