//! A fan-out SELECT streams: rows reach the client as shards produce them, and pgvane reads
//! from the shards only as fast as the client reads (bounded memory whatever the result
//! size). An error from a shard after rows were sent reaches the client like PostgreSQL's
//! own mid-result error, and every shard connection ends in a known state.

mod common;
mod raw_client;

use std::time::{Duration, Instant};

use common::*;
use raw_client::{error_of, Raw};

fn config(listen: u16, shards: &[(u16, String)]) -> String {
    let mut s = format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
default_pool_size = 2
auth_type = "trust"

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "big"
"#
    );
    for (port, db) in shards {
        s.push_str(&format!(
            "  [[databases.shards]]\n  primary = {{ host = \"127.0.0.1\", port = {port}, dbname = \"{db}\" }}\n"
        ));
    }
    s.push_str(
        "  [[databases.sharded_tables]]\n  table = \"seeds\"\n  column = \"id\"\n  type = \"bigint\"\n",
    );
    s
}

fn shard_dbs(pg: &PgServer, prefix: &str) -> Vec<(u16, String)> {
    (0..2)
        .map(|i| {
            let name = format!("{prefix}_{i}");
            pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
            pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
            (pg.port(), name)
        })
        .collect()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One seed row per shard, so that a join with generate_series fans out to both.
async fn seed(p: &Pgvane) -> tokio_postgres::Client {
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=app dbname=big",
        p.port()
    ))
    .await;
    c.batch_execute("CREATE TABLE seeds(id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let mut on = [false, false];
    for k in 1i64.. {
        let s = ::pgvane::sharding::hash::shard_of_text(
            &k.to_string(),
            ::pgvane::sharding::hash::KeyType::Int8,
            2,
        )
        .unwrap() as usize;
        if !on[s] {
            c.execute("INSERT INTO seeds VALUES ($1)", &[&k])
                .await
                .unwrap();
            on[s] = true;
        }
        if on == [true, true] {
            break;
        }
    }
    c
}

/// Total size in MiB (default 1024; `FANOUT_STREAM_MB` overrides, e.g. on a slow machine).
fn total_mb() -> u64 {
    std::env::var("FANOUT_STREAM_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gb_fanout_read_slowly_keeps_rss_growth_under_64mib() {
    slow_fanout_read("fstream", total_mb(), false).await;
}

/// The same over the extended protocol (Parse/Bind/Describe/Execute/Sync, as tokio-postgres
/// and JDBC send it), a quarter of the size: buffering would show as RSS growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_protocol_fanout_read_slowly_streams_too() {
    slow_fanout_read("fstreamx", total_mb() / 4, true).await;
}

fn extended_query(sql: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = sql.as_bytes().to_vec();
    p.splice(0..0, [0u8]); // unnamed statement
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    out.extend(raw_client::frame(b'P', &p));
    out.extend(raw_client::frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(raw_client::frame(b'D', b"P\0"));
    out.extend(raw_client::frame(b'E', &[0, 0, 0, 0, 0]));
    out.extend(raw_client::frame(b'S', &[]));
    out
}

async fn slow_fanout_read(prefix: &str, mb: u64, extended: bool) {
    let shards = shard_dbs(shared(), prefix);
    let p = Pgvane::start(&config(free_port(), &shards));
    let _c = seed(&p).await;
    // ~1 KiB per row, half of the total on each shard.
    let per_shard: u64 = mb * 1024 / 2;
    let mut r = Raw::connect(p.port(), "app", "big");
    let base = vm_rss_kib(p.pid());
    let started = Instant::now();
    let sql = format!("SELECT g, repeat('x', 1000) FROM seeds, generate_series(1, {per_shard}) g");
    if extended {
        r.send(&extended_query(&sql));
    } else {
        r.query(&sql);
    }
    let mut replies = String::new();
    let mut rows: u64 = 0;
    let mut sum: u64 = 0;
    let mut peak = base;
    let mut tag = String::new();
    // Read slowly: 16 KiB at a time, with a pause every 4 MiB, throttled to ~25 MiB/s.
    let target_rate = 25.0 * 1024.0 * 1024.0;
    let mut bytes: u64 = 0;
    let mut next_pause = 4 << 20;
    loop {
        let m = r.read_msg_chunked(16 * 1024);
        bytes += m.body.len() as u64 + 5;
        if m.tag != b'D' {
            replies.push(m.tag as char);
        }
        match m.tag {
            b'T' => {}
            b'D' => {
                // 2 columns: int8 text, then the 1000 x's.
                let b = &m.body;
                let l1 = u32::from_be_bytes([b[2], b[3], b[4], b[5]]) as usize;
                let g: u64 = std::str::from_utf8(&b[6..6 + l1]).unwrap().parse().unwrap();
                let l2 = u32::from_be_bytes([b[6 + l1], b[7 + l1], b[8 + l1], b[9 + l1]]);
                assert_eq!(l2, 1000);
                rows += 1;
                sum += g;
            }
            b'C' => tag = m.tag_text(),
            b'E' => panic!("error: {}", m.message()),
            b'Z' => break,
            _ => {}
        }
        if bytes >= next_pause {
            next_pause += 4 << 20;
            peak = peak.max(vm_rss_kib(p.pid()));
            let due = Duration::from_secs_f64(bytes as f64 / target_rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "fan-out took too long"
        );
    }
    peak = peak.max(vm_rss_kib(p.pid()));
    let growth_mib = (peak.saturating_sub(base)) as f64 / 1024.0;
    eprintln!(
        "fan-out of {} MiB: {rows} rows in {:.1}s, pgvane RSS {base} kB -> peak {peak} kB (+{growth_mib:.1} MiB)",
        bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    let expected = if extended { "12TCZ" } else { "TCZ" };
    assert_eq!(
        replies, expected,
        "the answers PostgreSQL gives, around the rows"
    );
    assert_eq!(rows, 2 * per_shard, "every row arrived");
    assert_eq!(sum, 2 * (per_shard * (per_shard + 1) / 2), "checksum");
    assert_eq!(tag, format!("SELECT {}", 2 * per_shard));
    assert!(
        growth_mib < 64.0,
        "pgvane RSS grew by {growth_mib:.1} MiB during the fan-out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_error_after_rows_reaches_the_client_and_connections_stay_usable() {
    let shards = shard_dbs(shared(), "ferr");
    let p = Pgvane::start(&config(free_port(), &shards));
    let c = seed(&p).await;
    let mut r = Raw::connect(p.port(), "app", "big");
    // Shard 1 fails at row 30000 after sending rows; shard 0 has 50000 rows.
    let sql = format!(
        "SELECT g, 1 / (CASE WHEN current_database() = '{}' AND g = 30000 THEN 0 ELSE 1 END) FROM seeds, generate_series(1, 50000) g",
        shards[1].1
    );
    for round in 0..3 {
        r.query(&sql);
        let msgs = r.until_ready();
        let e = error_of(&msgs).unwrap_or_else(|| panic!("round {round}: no error"));
        assert_eq!(e.code(), "22012", "{}", e.message());
        assert!(
            !msgs.iter().any(|m| m.tag == b'C'),
            "no CommandComplete after an error"
        );
        let z = msgs.last().unwrap();
        assert_eq!(z.body, b"I");
        // The same connection and the pool work normally afterwards.
        r.query("SELECT count(*) FROM seeds");
        let msgs = r.until_ready();
        assert!(error_of(&msgs).is_none());
        // One count over every shard, as one database would answer.
        let counts: Vec<i64> = c
            .query("SELECT count(*) FROM seeds", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect();
        assert_eq!(counts, [2]);
    }
}

/// An ordered fan-out of 1,000,000 rows is merged as it streams: pgvane holds one row per
/// shard, so its memory does not grow with the result (RSS growth < 50 MiB), and the rows
/// arrive in order, all of them, with the tag one database would send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_million_row_fanout_streams_in_bounded_memory() {
    let shards = shard_dbs(shared(), "fsorted");
    let p = Pgvane::start(&config(free_port(), &shards));
    let _c = seed(&p).await;
    let mut r = Raw::connect(p.port(), "app", "big");
    let base = vm_rss_kib(p.pid());
    // 500,000 rows per shard; the same g on both shards, so the merge interleaves them.
    r.query("SELECT g, md5(g::text) AS h FROM seeds, generate_series(1, 500000) g ORDER BY g DESC");
    let (mut rows, mut last, mut peak, mut tag) = (0u64, u64::MAX, base, String::new());
    let mut replies = String::new();
    loop {
        let m = r.read_msg_chunked(64 * 1024);
        if m.tag != b'D' {
            replies.push(m.tag as char);
        }
        match m.tag {
            b'D' => {
                let b = &m.body;
                assert_eq!(
                    u16::from_be_bytes([b[0], b[1]]),
                    2,
                    "the sort key column is not sent"
                );
                let l1 = u32::from_be_bytes([b[2], b[3], b[4], b[5]]) as usize;
                let g: u64 = std::str::from_utf8(&b[6..6 + l1]).unwrap().parse().unwrap();
                assert!(g <= last, "row {rows}: {g} after {last}");
                last = g;
                rows += 1;
                if rows % 100_000 == 0 {
                    peak = peak.max(vm_rss_kib(p.pid()));
                }
            }
            b'C' => tag = m.tag_text(),
            b'E' => panic!("error: {}", m.message()),
            b'Z' => break,
            _ => {}
        }
    }
    peak = peak.max(vm_rss_kib(p.pid()));
    let growth_mib = peak.saturating_sub(base) as f64 / 1024.0;
    eprintln!("ordered fan-out of {rows} rows: pgvane RSS {base} kB -> peak {peak} kB (+{growth_mib:.1} MiB)");
    assert_eq!(replies, "TCZ");
    assert_eq!(rows, 1_000_000);
    assert_eq!(last, 1);
    assert_eq!(tag, "SELECT 1000000");
    assert!(growth_mib < 50.0, "RSS grew {growth_mib:.1} MiB");
}
