//! Foundation: the pooler against a real PostgreSQL, with real clients (psql, pgbench,
//! tokio-postgres) and raw sockets for the protocol corner cases.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A pgvane config in front of `pg_port` with the test roles as users.
fn config(listen: u16, pg_port: u16, general: &str) -> String {
    let pool = if general.contains("default_pool_size") {
        ""
    } else {
        "default_pool_size = 5"
    };
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
{pool}
{general}

[[users]]
name = "app"
password = "app-secret"

[[users]]
name = "md5user"
password = "md5-secret"

[[users]]
name = "passuser"
password = "pass-secret"

[[users]]
name = "trustuser"
password = "whatever"
server_password = "unused"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}

[[databases]]
name = "other"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}
"#
    )
}

fn start(general: &str) -> Pgvane {
    let pg = shared();
    let port = free_port();
    Pgvane::start(&config(port, pg.port(), general))
}

fn url(p: &Pgvane, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={} dbname=app connect_timeout=10",
        p.port(),
        password_for(user).unwrap_or("x")
    )
}

fn psql(p: &Pgvane, sql: &str) -> std::process::Output {
    psql_cmd(p.port(), "app", "app", Some(APP_PASSWORD))
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql")
}

fn psql_ok(p: &Pgvane, sql: &str) -> String {
    let out = psql(p, sql);
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn msg(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no code: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let p = start("");
    assert_eq!(psql_ok(&p, "SELECT 1 + 1"), "2");
    let c = connect(&url(&p, "app")).await;
    let rows = c.simple_query("SELECT 'a' AS x; SELECT 2").await.unwrap();
    let data: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(data, vec!["a", "2"]);
    let r = c.query_one("SELECT $1::int + 1", &[&41i32]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
    let r = c
        .query("SELECT g FROM generate_series(1, 1000) g", &[])
        .await
        .unwrap();
    assert_eq!(r.len(), 1000);
    assert_eq!(r[999].get::<_, i32>(0), 1000);
    // An error inside an extended batch leaves the session usable.
    let e = c.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(code(&e), "22012");
    let r = c.query_one("SELECT 'still fine'::text", &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), "still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_100_clients_over_pool_of_5() {
    let p = start(r#"pool_mode = "transaction""#);
    let pg = shared();
    pg.psql("app", "CREATE TABLE IF NOT EXISTS prep_t(id int primary key, v text); TRUNCATE prep_t; INSERT INTO prep_t SELECT g, 'v' || g FROM generate_series(1, 100) g");
    let mut tasks = Vec::new();
    for i in 0..100i32 {
        let u = format!("{} application_name=prep100", url(&p, "app"));
        tasks.push(tokio::spawn(async move {
            let c = connect(&u).await;
            // Each client uses its own statement names (tokio-postgres names them s0, s1, ...),
            // so names collide across clients while texts differ.
            let by_id = c
                .prepare("SELECT v FROM prep_t WHERE id = $1")
                .await
                .unwrap();
            let plus = c.prepare(&format!("SELECT $1::int + {i}")).await.unwrap();
            for k in 1..=20i32 {
                let id = (i + k) % 100 + 1;
                let v: String = c.query_one(&by_id, &[&id]).await.unwrap().get(0);
                assert_eq!(v, format!("v{id}"));
                let s: i32 = c.query_one(&plus, &[&k]).await.unwrap().get(0);
                assert_eq!(s, k + i, "client {i} got another client's statement");
            }
            let tx = c.simple_query("BEGIN").await;
            assert!(tx.is_ok());
            let v: String = c.query_one(&by_id, &[&1i32]).await.unwrap().get(0);
            assert_eq!(v, "v1");
            c.simple_query("COMMIT").await.unwrap();
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    // The pool never exceeded its size.
    let n: i64 = pg
        .psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prep100'",
        )
        .parse()
        .unwrap();
    assert!((1..=5).contains(&n), "pool of 5 but {n} server connections");
}

#[test]
fn pgbench_all_protocols_through_transaction_pooling() {
    let p = start(r#"pool_mode = "transaction""#);
    let pg = shared();
    let init = std::process::Command::new(bin("pgbench"))
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "app",
            "app",
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &["-b", "tpcb-like"][..]] {
            let out = std::process::Command::new(bin("pgbench"))
                .args(["-n", "-c", "8", "-j", "2", "-t", "200", "-M", mode])
                .args(script)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &p.port().to_string(),
                    "-U",
                    "app",
                    "app",
                ])
                .env("PGPASSWORD", APP_PASSWORD)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "pgbench -M {mode} {script:?} failed:\n{stdout}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                p.log()
            );
            assert!(
                stdout.contains("number of transactions actually processed: 1600/1600"),
                "pgbench -M {mode}: {stdout}"
            );
            assert!(
                stdout.contains("number of failed transactions: 0"),
                "{stdout}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    use futures_util::{SinkExt, StreamExt};
    let p = start("");
    let c = connect(&url(&p, "app")).await;
    c.batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t(id int, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 5000);
    let stream = c
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), data);
    // psql's \copy goes through the same path.
    let csv = psql_ok(
        &p,
        "COPY (SELECT id FROM copy_t WHERE id < 3 ORDER BY id) TO STDOUT",
    );
    assert_eq!(csv, "0\n1\n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let p = start("");
    let c = connect(&url(&p, "app")).await;
    let token = c.cancel_token();
    let started = Instant::now();
    let q = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let r = q.await.unwrap();
    let e = r.expect_err("query should be cancelled");
    assert_eq!(code(&e), "57014");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "cancel took {:?}",
        started.elapsed()
    );
    // A cancel for a client that holds no server does nothing and harms nothing.
    let c2 = connect(&url(&p, "app")).await;
    c2.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    // A CancelRequest is asynchronous (its sender does not wait for it to be handled): give
    // it time to arrive, so that it cannot apply to the next statement instead.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c2.query_one("SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_servers_and_keeps_settings_per_client() {
    let p = start(r#"pool_mode = "transaction""#);
    let a = connect(&format!(
        "{} application_name=client_a options='-c statement_timeout=12345'",
        url(&p, "app")
    ))
    .await;
    let b = connect(&url(&p, "app")).await;
    a.batch_execute("SET search_path TO a_schema, public")
        .await
        .unwrap();
    for _ in 0..20 {
        let sp: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(sp, "a_schema, public");
        let sp: String = b.query_one("SHOW search_path", &[]).await.unwrap().get(0);
        assert_eq!(
            sp, "\"$user\", public",
            "search_path leaked to another client"
        );
        let st: String = a
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(st, "12345ms");
        let st: String = b
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(st, "0");
        let an: String = a
            .query_one(
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            an, "client_a",
            "the server carries the client's application_name"
        );
    }
    a.batch_execute("RESET search_path").await.unwrap();
    let sp: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "\"$user\", public");
    // Transactions stay on one server; between them the server goes back to the pool.
    a.batch_execute("BEGIN").await.unwrap();
    let p1: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let p2: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(p1, p2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_server_and_resets_it() {
    let p = start(
        r#"pool_mode = "session"
default_pool_size = 1"#,
    );
    let a = connect(&url(&p, "app")).await;
    let pid1: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.batch_execute("PREPARE sess_p AS SELECT 5; SET work_mem = '7MB'")
        .await
        .unwrap();
    let pid2: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid1, pid2);
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = connect(&url(&p, "app")).await;
    let pid3: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid3, pid1, "pool of one: the same server is reused");
    let wm: String = b.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "4MB", "server_reset_query (DISCARD ALL) ran");
    assert!(
        b.simple_query("EXECUTE sess_p").await.is_err(),
        "prepared statement survived reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_rejects_transactions() {
    let p = start(r#"pool_mode = "statement""#);
    let c = connect(&url(&p, "app")).await;
    assert_eq!(
        c.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0),
        3
    );
    let e = c.batch_execute("BEGIN").await.unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert!(msg(&e).contains("statement pooling"), "{e}");
    // Prepared statements work statement by statement.
    let st = c.prepare("SELECT $1::text").await.unwrap();
    for i in 0..10 {
        let v: String = c.query_one(&st, &[&i.to_string()]).await.unwrap().get(0);
        assert_eq!(v, i.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_and_failure_codes() {
    let pg = shared();
    for auth in ["scram-sha-256", "md5", "plain"] {
        let port = free_port();
        let p = Pgvane::start(&config(port, pg.port(), &format!("auth_type = \"{auth}\"")));
        // Each backend auth method: app is SCRAM, md5user md5, passuser cleartext.
        for user in ["app", "md5user", "passuser"] {
            let c = try_connect(&url(&p, user))
                .await
                .unwrap_or_else(|e| panic!("{auth}/{user}: {e}\n{}", p.log()));
            let who: String = c
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(who, user);
        }
        let bad = format!("host=127.0.0.1 port={port} user=app password=wrong dbname=app");
        let Err(e) = try_connect(&bad).await else {
            panic!("wrong password must fail")
        };
        assert_eq!(code(&e), "28P01", "{auth}: {e}");
        let unknown = format!("host=127.0.0.1 port={port} user=nosuch password=x dbname=app");
        let Err(e) = try_connect(&unknown).await else {
            panic!("unknown user must fail")
        };
        // As PostgreSQL: an unknown user cannot be told from a wrong password.
        assert_eq!(code(&e), "28P01", "{auth}: {e}");
        assert_eq!(
            msg(&e),
            "password authentication failed for user \"nosuch\"",
            "{auth}"
        );
        let nodb =
            format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=nosuchdb");
        let Err(e) = try_connect(&nodb).await else {
            panic!("unknown db must fail")
        };
        assert_eq!(code(&e), "3D000", "{auth}: {e}");
    }
    // trust: no password asked; the backend trusts trustuser.
    let port = free_port();
    let p = Pgvane::start(&config(port, pg.port(), "auth_type = \"trust\""));
    let c = connect(&format!(
        "host=127.0.0.1 port={port} user=trustuser dbname=app"
    ))
    .await;
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "trustuser");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_is_enforced() {
    let p = start("max_client_conn = 2");
    let a = connect(&url(&p, "app")).await;
    let b = connect(&url(&p, "app")).await;
    let Err(e) = try_connect(&url(&p, "app")).await else {
        panic!("third client must be refused")
    };
    assert_eq!(code(&e), "53300");
    assert!(msg(&e).contains("too many clients"), "{e}");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = connect(&url(&p, "app")).await;
    c.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_errors_and_pool_recovers() {
    let p = start(
        r#"default_pool_size = 1
query_wait_timeout = "500ms""#,
    );
    let a = connect(&url(&p, "app")).await;
    let b = connect(&url(&p, "app")).await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let started = Instant::now();
    let e = b.simple_query("SELECT 2").await.unwrap_err();
    assert_eq!(code(&e), "53300", "{e}");
    assert!(msg(&e).contains("query_wait_timeout"), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(450));
    a.batch_execute("COMMIT").await.unwrap();
    let r: i32 = b.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(r, 3, "the waiting client works once the pool frees up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_replaced_and_client_survives() {
    let p = start(
        r#"pool_mode = "transaction"
default_pool_size = 1"#,
    );
    let pg = shared();
    let c = connect(&url(&p, "app")).await;
    // Idle server killed: the next query gets a fresh one without an error.
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    pg.psql("app", &format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid2: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid, pid2);
    // Server killed during a query: that query fails, the next one works.
    let killer = {
        let port = pg.port();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let k = connect(&format!(
                "host=127.0.0.1 port={port} user=postgres dbname=app"
            ))
            .await;
            k.simple_query(&format!("SELECT pg_terminate_backend({pid2})"))
                .await
                .unwrap();
        })
    };
    let e = c.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    killer.await.unwrap();
    assert!(e.code().is_some(), "client gets an error: {e}");
    let v: i32 = c.query_one("SELECT 11", &[]).await.unwrap().get(0);
    assert_eq!(v, 11);
}

fn raw_login(port: u16) -> TcpStream {
    // trust-less login needs SCRAM; use a psql-free path: start a session via startup only to
    // exercise pre-auth handling.
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn startup_packet(params: &[(&str, &str)], minor: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(3u32 << 16 | minor as u32).to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_input_only_hurts_the_sender() {
    let p = start(
        r#"auth_type = "trust"
max_message_size = 65536"#,
    );
    let port = p.port();
    let other = connect(&url(&p, "app")).await;
    let before: i32 = other.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(before, 1);
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        vec![0, 0, 0, 2],
        {
            let mut v = startup_packet(&[], 5);
            v[5] = 9; // major version 9
            v
        },
    ];
    for bytes in cases {
        let mut s = raw_login(port);
        let _ = s.write_all(&bytes);
        let reply = read_all(&mut s);
        if !reply.is_empty() {
            assert_eq!(reply[0], b'E', "garbage gets an ErrorResponse: {reply:?}");
            let text = String::from_utf8_lossy(&reply);
            assert!(text.contains("08P01"), "{text}");
        }
    }
    // After login (trust): an unknown message type and an oversized message.
    for bad in [vec![b'@', 0, 0, 0, 4], {
        let mut v = vec![b'Q'];
        v.extend_from_slice(&(1u32 << 30).to_be_bytes());
        v
    }] {
        let mut s = raw_login(port);
        s.write_all(&startup_packet(&[("user", "app"), ("database", "app")], 0))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "login closed: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(&bad).unwrap();
        let reply = read_all(&mut s);
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("FATAL") && text.contains("08P01"), "{text}");
    }
    let after: i32 = other.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(after, 2, "other clients unaffected");
    assert!(
        psql(&p, "SELECT 1").status.success(),
        "process still serves new clients"
    );
}

#[test]
fn protocol_negotiation_and_ssl_refusal() {
    let p = start(r#"auth_type = "trust""#);
    let mut s = raw_login(p.port());
    // SSLRequest gets 'N'.
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    assert_eq!(one[0], b'N');
    // A 3.2 startup with a protocol option is negotiated down to 3.0.
    s.write_all(&startup_packet(
        &[("user", "app"), ("database", "app"), ("_pq_.test", "1")],
        2,
    ))
    .unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], b'v', "NegotiateProtocolVersion first");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body[..4], &[0, 3, 0, 0], "newest supported: 3.0");
    assert_eq!(&body[4..8], &[0, 0, 0, 1]);
    assert!(String::from_utf8_lossy(&body[8..]).contains("_pq_.test"));
}

#[test]
fn graceful_shutdown_lets_transactions_finish() {
    let mut p = start(r#"shutdown_timeout = "10s""#);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = connect(&url(&p, "app")).await;
        c.batch_execute("BEGIN").await.unwrap();
        c.query_one("SELECT 1", &[]).await.unwrap();
        p.signal(libc::SIGTERM);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // New connections are refused while draining.
        assert!(try_connect(&url(&p, "app")).await.is_err());
        // The open transaction still completes.
        let v: i32 = c.query_one("SELECT 5", &[]).await.unwrap().get(0);
        assert_eq!(v, 5);
        c.batch_execute("COMMIT").await.unwrap();
    });
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("pgvane exits after drain");
    assert!(status.success(), "exit status {status}\n{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_change_does_not_break_prepared_statements() {
    let p = start(r#"pool_mode = "transaction""#);
    let c = connect(&url(&p, "app")).await;
    c.batch_execute("DROP TABLE IF EXISTS plan_t; CREATE TABLE plan_t(a varchar(10)); INSERT INTO plan_t VALUES ('one')")
        .await
        .unwrap();
    let st = c.prepare("SELECT a FROM plan_t").await.unwrap();
    assert_eq!(c.query(&st, &[]).await.unwrap().len(), 1);
    // As directly against PostgreSQL, the client whose described result type changed gets
    // "cached plan must not change result type" (it must re-describe, as asyncpg does);
    // its re-prepare then works on the same pooled server.
    c.batch_execute("ALTER TABLE plan_t ALTER COLUMN a TYPE text")
        .await
        .unwrap();
    let e = c.query(&st, &[]).await.unwrap_err();
    assert_eq!(code(&e), "0A000", "{e:?}");
    let st = c.prepare("SELECT a FROM plan_t").await.unwrap();
    let rows = c.query(&st, &[]).await.expect("re-prepared");
    assert_eq!(rows[0].get::<_, String>(0), "one");
    // The same happens directly against PostgreSQL (proving the test provokes the error).
    let pg = shared();
    let d = connect(&pg.connstr("app", "app")).await;
    let st = d.prepare("SELECT a FROM plan_t").await.unwrap();
    d.batch_execute("ALTER TABLE plan_t ALTER COLUMN a TYPE varchar(20)")
        .await
        .unwrap();
    let e = d.query(&st, &[]).await.unwrap_err();
    assert_eq!(code(&e), "0A000");
}

#[test]
fn check_command_validates_configs() {
    let ok = std::process::Command::new(pgvane_bin())
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("127.0.0.1:5432"), "{text}");
    let dir = std::env::temp_dir().join(format!("pgvane-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[general]\npool_mode = \"sometimes\"\n").unwrap();
    let out = std::process::Command::new(pgvane_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool_mode"), "{err}");
    // Running with a bad config exits non-zero with the reason.
    let out = std::process::Command::new(pgvane_bin())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool_mode"));
    std::fs::remove_dir_all(&dir).unwrap();
}
