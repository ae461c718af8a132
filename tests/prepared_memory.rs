//! Bounded memory for shared prepared statements: an application that prepares ever new
//! statement texts (IN lists of varying length, ORMs with inlined values) must not grow
//! pgvane's memory once it has closed them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::{future, stream, StreamExt};

use common::*;

const CLIENTS: usize = 4;
const STATEMENTS: usize = 100_000;
const IN_FLIGHT: usize = 64;
const POOL: usize = 4;
const MAX_PREPARED: usize = 50;

fn config(listen: u16, metrics: u16, pg_port: u16) -> String {
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
metrics_addr = "127.0.0.1:{metrics}"
pool_mode = "transaction"
default_pool_size = {POOL}
max_prepared_statements = {MAX_PREPARED}

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}
"#
    )
}

/// pgvane's resident set size in bytes, from /proc/<pid>/status.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// The value of an unlabelled sample in pgvane's /metrics, if present.
fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("metrics response");
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A distinct statement text of about 400 bytes: a leak of 100,000 of them is ~40 MB.
fn text(batch: &str, i: usize) -> String {
    let pad = format!("{batch}-{i}-").repeat(60);
    format!("SELECT {i}::int AS n, '{}'::text AS pad", &pad[..360])
}

/// Prepare `n` distinct statements per client (ids `base..`), keep them all open, then
/// close them all and wait until pgvane has processed the Close messages.
async fn prepare_and_close(
    clients: &[tokio_postgres::Client],
    batch: &str,
    n: usize,
    pid: u32,
) -> u64 {
    let per_client = clients.iter().enumerate().map(|(k, c)| async move {
        stream::iter(0..n)
            .map(|i| async move { c.prepare(&text(batch, k * n + i)).await })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
    });
    let mut held = Vec::new();
    for stmts in future::join_all(per_client).await {
        for s in stmts {
            held.push(s.expect("prepare through pgvane"));
        }
    }
    let peak = rss(pid);
    drop(held);
    // Each client's connection sends its Close messages before this query.
    for c in clients {
        c.simple_query("SELECT 1").await.expect("round trip");
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_statements_do_not_grow_memory() {
    let pg = shared();
    let mport = free_port();
    let p = Pgvane::start_fn(|l| config(l, mport, pg.port()));
    let url = format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=app connect_timeout=10",
        p.port()
    );
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect(&url).await);
    }

    // Warm-up: every server connection opened, allocator arenas and buffers in use.
    prepare_and_close(&clients, "warm", 2_000, p.pid()).await;
    let start = rss(p.pid());

    let t = Instant::now();
    let peak = prepare_and_close(&clients, "load", STATEMENTS / CLIENTS, p.pid()).await;
    let elapsed = t.elapsed();

    // Memory is given back as the last holder lets go; allow the allocator a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        let now = rss(p.pid());
        if now <= start + (20 << 20) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let size = metric(mport, "pgvane_prepared_statements");
    let evicted = metric(mport, "pgvane_prepared_evictions_total");
    eprintln!("registry size {size:?}, evictions {evicted:?}");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "{STATEMENTS} statements in {elapsed:?}: RSS after warm-up {:.1} MiB, with all open {:.1} MiB, after closing {:.1} MiB",
        mib(start),
        mib(peak),
        mib(end)
    );
    assert!(
        peak > start + (20 << 20),
        "holding {STATEMENTS} open statements should cost pgvane more than 20 MiB \
         (else this test measures nothing): {:.1} -> {:.1} MiB",
        mib(start),
        mib(peak)
    );
    assert!(
        end <= start + (20 << 20),
        "RSS did not return to within 20 MiB of its start: {:.1} -> {:.1} MiB (peak {:.1})",
        mib(start),
        mib(end),
        mib(peak)
    );

    // What is left is only what the servers still hold (their LRU, MAX_PREPARED each).
    let size = size.expect("registry size gauge");
    assert!(
        size <= (POOL * MAX_PREPARED) as f64,
        "registry still holds {size} statements"
    );
    let evicted = evicted.expect("eviction counter");
    assert!(
        evicted >= (STATEMENTS - POOL * MAX_PREPARED) as f64,
        "only {evicted} registry evictions"
    );

    // The pooled statements still work after all that churn.
    let st = clients[0].prepare("SELECT $1::int + 1").await.unwrap();
    for c in &clients[1..] {
        let r = c.query_one("SELECT $1::int * 2", &[&21i32]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), 42);
    }
    let r = clients[0].query_one(&st, &[&41i32]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
    // A text whose shared statement was evicted is prepared again (under a new name) and
    // answers as itself, from every client and so every server.
    for (k, c) in clients.iter().enumerate() {
        let again = c.prepare(&text("load", 7)).await.unwrap();
        for _ in 0..3 {
            let r = c.query_one(&again, &[]).await.unwrap();
            assert_eq!(r.get::<_, i32>(0), 7, "client {k}");
            assert!(r.get::<_, String>(1).starts_with("load-7-"), "client {k}");
        }
    }
}
