//! Sharding against real PostgreSQL: shards as separate databases (and on separate servers),
//! placement checked with PostgreSQL's own satisfies_hash_partition.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tokio_postgres::SimpleQueryMessage;

/// (host port, dbname) per shard.
fn config(listen: u16, shards: &[(u16, String)], general: &str) -> String {
    let mut s = format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
default_pool_size = 3
{general}

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

/// Create `n` shard databases on one server; returns their (port, name).
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

fn url(p: &Pgvane) -> String {
    format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=shop",
        p.port()
    )
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn tag(msgs: &[SimpleQueryMessage]) -> u64 {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .unwrap()
}

fn shard_of(key: i64, n: u32) -> usize {
    ::pgvane::sharding::hash::shard_of_text(
        &key.to_string(),
        ::pgvane::sharding::hash::KeyType::Int8,
        n,
    )
    .unwrap() as usize
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

fn direct(pg_port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={pg_port} user=app password=app-secret dbname={db}")
}

async fn sharded_scenario(shards: Vec<(u16, String)>) {
    let n = shards.len() as u32;
    let p = Pgvane::start(&config(free_port(), &shards, ""));
    let c = connect(&url(&p)).await;

    // DDL is broadcast; the client sees one CommandComplete.
    c.batch_execute("CREATE TABLE orders(customer_id bigint NOT NULL, id bigint, amount int, PRIMARY KEY (customer_id, id))")
        .await
        .unwrap();
    let hp_parts: String = (0..n)
        .map(|i| {
            format!(
                "CREATE TABLE hp_{i} PARTITION OF hp FOR VALUES WITH (MODULUS {n}, REMAINDER {i});"
            )
        })
        .collect();
    c.batch_execute(&format!(
        "CREATE TABLE hp(customer_id bigint) PARTITION BY HASH (customer_id); {hp_parts}"
    ))
    .await
    .unwrap();
    for (port, db) in &shards {
        let d = connect(&direct(*port, db)).await;
        d.query_one("SELECT 'orders'::regclass", &[])
            .await
            .expect("DDL reached every shard");
    }

    // 10,000 rows through pgvane, as multi-row INSERTs whose rows span shards.
    for chunk in 0..100i64 {
        let values: Vec<String> = (0..100i64)
            .map(|j| {
                let k = chunk * 100 + j;
                format!("({}, {k}, {})", k * 7919 - 300_000, k % 13)
            })
            .collect();
        let msgs = c
            .simple_query(&format!("INSERT INTO orders VALUES {}", values.join(", ")))
            .await
            .unwrap();
        assert_eq!(
            tag(&msgs),
            100,
            "one INSERT 0 100 for rows split over shards"
        );
    }
    // Every row is where PostgreSQL's own hash partitioning would put it.
    let mut total = 0;
    for (i, (port, db)) in shards.iter().enumerate() {
        let d = connect(&direct(*port, db)).await;
        let count: i64 = d
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        let wrong: i64 = d
            .query_one(
                &format!("SELECT count(*) FROM orders WHERE NOT satisfies_hash_partition('hp'::regclass, {n}, {i}, customer_id)"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(wrong, 0, "shard {i} holds rows another partition would own");
        assert!(count > 0, "shard {i} is empty");
        total += count;
    }
    assert_eq!(total, 10_000);

    // Point statements touch only the owning shard.
    let key = 42i64 * 7919 - 300_000;
    let owner = &shards[shard_of(key, n)].1;
    let r = rows(
        &c.simple_query(&format!(
            "SELECT current_database(), amount FROM orders WHERE customer_id = {key}"
        ))
        .await
        .unwrap(),
    );
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0][0], owner);
    let r = rows(
        &c.simple_query(&format!("UPDATE orders SET amount = amount + 100 WHERE customer_id = {key} RETURNING current_database()"))
            .await
            .unwrap(),
    );
    assert_eq!(r, vec![vec![owner.clone()]]);
    let msgs = c
        .simple_query(&format!("DELETE FROM orders WHERE {key} = customer_id"))
        .await
        .unwrap();
    assert_eq!(tag(&msgs), 1);

    // IN lists reach only their shards.
    let keys: Vec<i64> = (1..=5).map(|k| k * 7919 - 300_000).collect();
    let expect: BTreeSet<String> = keys
        .iter()
        .map(|k| shards[shard_of(*k, n)].1.clone())
        .collect();
    let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let r = rows(
        &c.simple_query(&format!(
            "SELECT DISTINCT current_database() FROM orders WHERE customer_id IN ({})",
            list.join(",")
        ))
        .await
        .unwrap(),
    );
    let got: BTreeSet<String> = r.into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(got, expect);

    // Fan-out: every row exactly once, one CommandComplete with the total.
    let msgs = c
        .simple_query("SELECT customer_id, id FROM orders")
        .await
        .unwrap();
    let r = rows(&msgs);
    assert_eq!(r.len(), 9_999);
    assert_eq!(tag(&msgs), 9_999);
    let distinct: BTreeSet<&String> = r.iter().map(|r| &r[1]).collect();
    assert_eq!(distinct.len(), 9_999);

    // The same fan-out over the extended protocol (tokio-postgres), reads and writes.
    let all = c
        .query("SELECT customer_id, id FROM orders", &[])
        .await
        .unwrap();
    assert_eq!(all.len(), 9_999);
    let ids: BTreeSet<i64> = all.iter().map(|r| r.get::<_, i64>(1)).collect();
    assert_eq!(ids.len(), 9_999, "every row exactly once");
    let count = c.prepare("SELECT count(*) FROM orders").await.unwrap();
    for _ in 0..2 {
        let counts = c.query(&count, &[]).await.unwrap();
        let counts: Vec<i64> = counts.iter().map(|r| r.get::<_, i64>(0)).collect();
        assert_eq!(
            counts,
            [9_999],
            "one count over every shard, as one database answers"
        );
    }
    let touched = c
        .execute("UPDATE orders SET amount = amount WHERE amount >= 0", &[])
        .await
        .unwrap();
    assert_eq!(touched, 9_999, "one UPDATE count summed over the shards");

    // Extended protocol with the key as a binary $1 (tokio-postgres sends int8 in binary).
    let k2 = 43i64 * 7919 - 300_000;
    let row = c
        .query_one(
            "SELECT current_database()::text, id FROM orders WHERE customer_id = $1",
            &[&k2],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), shards[shard_of(k2, n)].1);
    let st = c
        .prepare("SELECT current_database()::text FROM orders WHERE customer_id = $1")
        .await
        .unwrap();
    for k in [k2, key + 7919, key + 2 * 7919] {
        let rows = c.query(&st, &[&k]).await.unwrap();
        for r in rows {
            assert_eq!(r.get::<_, String>(0), shards[shard_of(k, n)].1);
        }
    }

    // Hints.
    let r = rows(
        &c.simple_query("/* pgvane: shard=1 */ SELECT current_database()")
            .await
            .unwrap(),
    );
    assert_eq!(r[0][0], shards[1].1);
    let r = rows(
        &c.simple_query(&format!(
            "/* pgvane: sharding_key={k2} */ SELECT current_database()"
        ))
        .await
        .unwrap(),
    );
    assert_eq!(r[0][0], shards[shard_of(k2, n)].1);
    c.batch_execute("SET pgvane.shard = 0").await.unwrap();
    let r = rows(&c.simple_query("SELECT current_database()").await.unwrap());
    assert_eq!(r[0][0], shards[0].1);
    c.batch_execute("RESET pgvane.shard").await.unwrap();
    let e = c
        .batch_execute(&format!("SET pgvane.shard = {n}"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");

    // A statement the parser cannot read, without a hint: a clear error.
    let e = c
        .simple_query("SELECT x FROM ROWS FROM (generate_series(1, 2)) AS t(x)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert!(e.as_db_error().unwrap().message().contains("hint"));

    // A write transaction may not touch a second shard.
    let (a, b) = {
        let mut a = None;
        let mut b = None;
        for k in 1_000_000i64.. {
            match (shard_of(k, n), a, b) {
                (0, None, _) => a = Some(k),
                (1, _, None) => b = Some(k),
                _ => {}
            }
            if a.is_some() && b.is_some() {
                break;
            }
        }
        (a.unwrap(), b.unwrap())
    };
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("INSERT INTO orders VALUES ({a}, 1, 1)"))
        .await
        .unwrap();
    let e = c
        .batch_execute(&format!("INSERT INTO orders VALUES ({b}, 1, 1)"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    c.batch_execute("ROLLBACK").await.unwrap();
    let r = rows(
        &c.simple_query(&format!("SELECT 1 FROM orders WHERE customer_id = {a}"))
            .await
            .unwrap(),
    );
    assert!(r.is_empty(), "rolled back");

    // A failing shard leaves no half-applied write: shard 1 already has (b, 7).
    let d1 = connect(&direct(shards[1].0, &shards[1].1)).await;
    d1.batch_execute(&format!("INSERT INTO orders VALUES ({b}, 7, 0)"))
        .await
        .unwrap();
    let e = c
        .simple_query(&format!(
            "INSERT INTO orders VALUES ({a}, 7, 1), ({b}, 7, 1)"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    let r = rows(
        &c.simple_query(&format!("SELECT 1 FROM orders WHERE customer_id = {a}"))
            .await
            .unwrap(),
    );
    assert!(
        r.is_empty(),
        "shard 0's part of the failed INSERT was rolled back"
    );
    // The pool is healthy afterwards.
    let r = rows(
        &c.simple_query(&format!(
            "SELECT count(*) FROM orders WHERE customer_id = {b}"
        ))
        .await
        .unwrap(),
    );
    assert_eq!(r[0][0], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_in_one_server() {
    let shards = shard_dbs(shared(), "shop2", 2);
    sharded_scenario(shards).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_in_one_server() {
    let shards = shard_dbs(shared(), "shop4", 4);
    sharded_scenario(shards).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_on_separate_servers() {
    let a = PgServer::start();
    let b = PgServer::start();
    let shards = vec![shard_dbs(&a, "sep", 1).remove(0), {
        b.psql("postgres", "CREATE DATABASE sep_1 OWNER app");
        (b.port(), "sep_1".to_string())
    }];
    sharded_scenario(shards).await;
}

/// Raw extended protocol with a text-format parameter (tokio-postgres always sends binary).
fn raw_text_param_query(port: u16, sql: &str, param: &str) -> Vec<String> {
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for kv in ["user", "app", "database", "shop", ""] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut read_until_z = |s: &mut TcpStream, buf: &mut Vec<u8>| loop {
        if let Some(pos) = buf.windows(2).position(|w| w[0] == b'Z' && w[1] == 0) {
            if buf.len() >= pos + 6 {
                let rest = buf.split_off(pos + 6);
                let done = std::mem::replace(buf, rest);
                return done;
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    };
    read_until_z(&mut s, &mut buf);
    let mut out = Vec::new();
    let mut p = Vec::new();
    p.extend_from_slice(b"\0");
    p.extend_from_slice(sql.as_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    out.extend(frame(b'P', &p));
    let mut b = vec![0u8, 0, 0, 0, 0, 1]; // portal "", stmt "", 0 formats (text), 1 param
    b.extend_from_slice(&(param.len() as u32).to_be_bytes());
    b.extend_from_slice(param.as_bytes());
    b.extend_from_slice(&[0, 0]);
    out.extend(frame(b'B', &b));
    out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    out.extend(frame(b'S', &[]));
    s.write_all(&out).unwrap();
    let resp = read_until_z(&mut s, &mut buf);
    // Pull text values out of DataRows.
    let mut vals = Vec::new();
    let mut i = 0;
    while i + 5 <= resp.len() {
        let len = u32::from_be_bytes([resp[i + 1], resp[i + 2], resp[i + 3], resp[i + 4]]) as usize;
        if resp[i] == b'D' {
            let l =
                u32::from_be_bytes([resp[i + 7], resp[i + 8], resp[i + 9], resp[i + 10]]) as usize;
            vals.push(String::from_utf8_lossy(&resp[i + 11..i + 11 + l]).into_owned());
        }
        assert_ne!(
            resp[i],
            b'E',
            "error: {}",
            String::from_utf8_lossy(&resp[i..i + 1 + len])
        );
        i += 1 + len;
    }
    vals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_parameters_and_text_keys() {
    let shards = shard_dbs(shared(), "shoptx", 2);
    let p = Pgvane::start(&config(free_port(), &shards, "auth_type = \"trust\""));
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=app dbname=shop",
        p.port()
    ))
    .await;
    c.batch_execute(
        "CREATE TABLE orders(customer_id bigint, v text); CREATE TABLE accounts(email text, n int)",
    )
    .await
    .unwrap();
    let mut placed: HashMap<String, String> = HashMap::new();
    for k in 0..40i64 {
        c.batch_execute(&format!("INSERT INTO orders VALUES ({k}, 'v{k}')"))
            .await
            .unwrap();
        let email = format!("user{k}@example.com");
        c.execute(
            "INSERT INTO accounts VALUES ($1, $2)",
            &[&email, &(k as i32)],
        )
        .await
        .unwrap();
        let db = shards[::pgvane::sharding::hash::shard_of_text(
            &email,
            ::pgvane::sharding::hash::KeyType::Text,
            2,
        )
        .unwrap() as usize]
            .1
            .clone();
        placed.insert(email, db);
    }
    for k in [3i64, 17, 29] {
        let vals = raw_text_param_query(
            p.port(),
            "SELECT current_database()::text FROM orders WHERE customer_id = $1",
            &k.to_string(),
        );
        assert_eq!(
            vals,
            vec![shards[shard_of(k, 2)].1.clone()],
            "text-format $1 = {k}"
        );
    }
    for (email, db) in placed.iter().take(10) {
        let row = c
            .query_one(
                "SELECT current_database()::text FROM accounts WHERE email = $1",
                &[email],
            )
            .await
            .unwrap();
        assert_eq!(&row.get::<_, String>(0), db, "{email}");
        let d = connect(&direct(shards.iter().find(|s| &s.1 == db).unwrap().0, db)).await;
        let n: i64 = d
            .query_one("SELECT count(*) FROM accounts WHERE email = $1", &[email])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
}

#[test]
fn shard_command_prints_placements() {
    let out = std::process::Command::new(pgvane_bin())
        .args([
            "shard",
            "--shards",
            "4",
            "--type",
            "bigint",
            "1",
            "2",
            "-9223372036854775808",
            "42",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    for (line, v) in lines.iter().zip(["1", "2", "-9223372036854775808", "42"]) {
        let expect =
            ::pgvane::sharding::hash::shard_of_text(v, ::pgvane::sharding::hash::KeyType::Int8, 4)
                .unwrap();
        assert_eq!(*line, format!("{v}\t{expect}"));
    }
    // Text keys hash as PostgreSQL's text_ops; bad values are refused with a message.
    let out = std::process::Command::new(pgvane_bin())
        .args([
            "shard",
            "--shards",
            "3",
            "--type",
            "text",
            "user@example.com",
        ])
        .output()
        .unwrap();
    let expect = ::pgvane::sharding::hash::shard_of_text(
        "user@example.com",
        ::pgvane::sharding::hash::KeyType::Text,
        3,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("user@example.com\t{expect}")
    );
    let bad = std::process::Command::new(pgvane_bin())
        .args([
            "shard",
            "--shards",
            "2",
            "--type",
            "integer",
            "not-a-number",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not-a-number"));
}
