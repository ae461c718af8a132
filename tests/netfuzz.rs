//! Network-level fuzz test: random and mutated sessions against a real pgvane + PostgreSQL,
//! with well-behaved clients beside them whose every answer is checked.
//!
//! Owns: the setup (one PostgreSQL; pgvane in transaction mode with a small pool in front
//! of a plain database `app` and a 2-shard database `shop`), running attackers
//! (`netfuzz/attack.rs`) and checked clients (`netfuzz/clients.rs`) for
//! `PGVANE_NETFUZZ_SECS` seconds (default 60), and the end checks: once every client is
//! gone no server is held (admin console SHOW POOLS / SHOW CLIENTS, pg_stat_activity), a
//! fresh client is answered, pgvane is alive and its RSS is within 20 MiB of its value
//! after warm-up.
//!
//! Knobs: `PGVANE_NETFUZZ_SECS`, `PGVANE_NETFUZZ_SEED` (replay a case sequence; timing
//! still varies), `PGVANE_NETFUZZ_ATTACKERS` (default 8), `PGVANE_NETFUZZ_CLIENTS`
//! (default 12), `PGVANE_NETFUZZ_KINDS` (comma list of random,startup,scram,session).
//!
//! Must not: hang (every read has a deadline), or talk to anything but loopback.

#[path = "netfuzz/attack.rs"]
mod attack;
#[path = "netfuzz/clients.rs"]
mod clients;
mod common;
#[path = "netfuzz/repro.rs"]
mod repro;
#[path = "netfuzz/wire.rs"]
mod wire;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_postgres::SimpleQueryMessage;

/// Counters shared by every task, and notes on what failed.
#[derive(Default)]
pub struct Stats {
    pub cases: AtomicU64,
    pub cases_by_kind: [AtomicU64; 4],
    pub connect_failed: AtomicU64,
    pub login_failed: AtomicU64,
    pub scram_survived: AtomicU64,
    pub attacker_hang: AtomicU64,
    pub attacker_wrong: AtomicU64,
    pub client_queries: AtomicU64,
    pub client_ok: AtomicU64,
    pub client_wrong: AtomicU64,
    pub client_error: AtomicU64,
    pub client_missing: AtomicU64,
    pub pgbench_tx: AtomicU64,
    notes: Mutex<Vec<(Instant, String)>>,
    recent: Mutex<VecDeque<(Instant, String)>>,
}

impl Stats {
    pub fn bump(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts a failure and keeps its description (the first 200).
    pub fn fail(&self, c: &AtomicU64, what: String) {
        self.bump(c);
        let mut n = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if n.len() < 200 {
            n.push((Instant::now(), what));
        }
    }
    fn case_done(&self, kind: usize, desc: String) {
        self.bump(&self.cases);
        self.bump(&self.cases_by_kind[kind]);
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= 5000 {
            r.pop_front();
        }
        r.push_back((Instant::now(), desc));
    }
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(listen: u16, pg_port: u16, pool_size: u32) -> String {
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
pool_mode = "transaction"
default_pool_size = {pool_size}
admin_users = ["admin"]
shutdown_timeout = "2s"

[[users]]
name = "app"
password = "app-secret"

[[users]]
name = "admin"
password = "admin-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}

[[databases]]
name = "shop"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "nf_shard_0" }}
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "nf_shard_1" }}
  [[databases.sharded_tables]]
  table = "orders"
  column = "customer_id"
  type = "bigint"
"#
    )
}

fn setup_schema(pg: &PgServer) {
    pg.psql(
        "app",
        "CREATE TABLE nf_own(client int8, n int8, v int8); CREATE TABLE nf_junk(x text); \
         ALTER TABLE nf_own OWNER TO app; ALTER TABLE nf_junk OWNER TO app",
    );
    for i in 0..2 {
        let db = format!("nf_shard_{i}");
        pg.psql("postgres", &format!("CREATE DATABASE {db} OWNER app"));
        pg.psql(
            &db,
            "CREATE TABLE orders(customer_id bigint NOT NULL, id bigint, amount int, \
             PRIMARY KEY (customer_id, id)); ALTER TABLE orders OWNER TO app",
        );
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn url(port: u16, user: &str, db: &str) -> String {
    let pw = if user == "admin" {
        "admin-secret"
    } else {
        "app-secret"
    };
    format!("host=127.0.0.1 port={port} user={user} password={pw} dbname={db} connect_timeout=10")
}

/// Per (database, user) pool row: cl_active, cl_waiting, sv_active summed over shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Held {
    cl_active: u64,
    cl_waiting: u64,
    sv_active: u64,
    clients: u64,
}

async fn held(port: u16) -> Result<Held, String> {
    let a = try_connect(&url(port, "admin", "pgvane"))
        .await
        .map_err(|e| format!("admin console: {e}"))?;
    let mut h = Held::default();
    let msgs = a
        .simple_query("SHOW POOLS")
        .await
        .map_err(|e| e.to_string())?;
    for m in &msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let col = |c: &str| r.get(c).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if r.get("database") != Some("pgvane") {
                h.cl_active += col("cl_active");
                h.cl_waiting += col("cl_waiting");
                h.sv_active += col("sv_active");
            }
        }
    }
    let msgs = a
        .simple_query("SHOW CLIENTS")
        .await
        .map_err(|e| e.to_string())?;
    h.clients = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get("database") != Some("pgvane")))
        .count() as u64;
    Ok(h)
}

fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// A fresh client on each database gets right answers (within 10 s each).
async fn fresh_client_ok(port: u16) -> Result<(), String> {
    let t = Duration::from_secs(10);
    let within = |r| match r {
        Ok(r) => r,
        Err(_) => Err("no answer within 10 s".to_string()),
    };
    within(tokio::time::timeout(t, fresh_queries(port)).await)
}

async fn fresh_queries(port: u16) -> Result<(), String> {
    let c = try_connect(&url(port, "app", "app"))
        .await
        .map_err(pg_err)?;
    let r = c.query_one("SELECT $1::int8 + 1", &[&41i64]).await;
    let v: i64 = r.map_err(pg_err)?.get(0);
    if v != 42 {
        return Err(format!("app: SELECT 41 + 1 gave {v}"));
    }
    let s = try_connect(&url(port, "app", "shop"))
        .await
        .map_err(pg_err)?;
    let r = s
        .query(
            "SELECT customer_id FROM orders WHERE customer_id = $1",
            &[&7i64],
        )
        .await;
    let n = r.map_err(pg_err)?.len();
    if n != 0 {
        return Err(format!("shop: {n} rows for a key nobody wrote"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_fuzz() {
    let secs = env_u64("PGVANE_NETFUZZ_SECS", 60).max(5);
    let seed = env_u64("PGVANE_NETFUZZ_SEED", rand::random::<u32>() as u64);
    let n_attackers = env_u64("PGVANE_NETFUZZ_ATTACKERS", 8);
    let n_clients = env_u64("PGVANE_NETFUZZ_CLIENTS", 12);
    let kinds: Vec<attack::Kind> = match std::env::var("PGVANE_NETFUZZ_KINDS") {
        Ok(s) => attack::KINDS
            .into_iter()
            .filter(|k| s.split(',').any(|w| w.trim() == k.name()))
            .collect(),
        Err(_) => attack::KINDS.to_vec(),
    };
    println!(
        "netfuzz: seed {seed} (PGVANE_NETFUZZ_SEED={seed} to replay), {secs} s, \
         {n_attackers} attackers {kinds:?}, {n_clients} clients + psql + 2 pgbench"
    );

    let pg = PgServer::start();
    setup_schema(&pg);
    let mut p = Pgvane::start_fn(|port| config(port, pg.port(), 5));
    let port = p.port();
    let pid = p.pid();
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);

    let mut tasks = Vec::new();
    for a in 0..n_attackers {
        let (stats, kinds) = (stats.clone(), kinds.clone());
        tasks.push(tokio::spawn(async move {
            let target = attack::Target {
                port,
                dbs: vec!["app", "app", "shop"],
                kinds,
            };
            let mut rng = StdRng::seed_from_u64(seed ^ (a + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut i = 0u64;
            while Instant::now() < until {
                let id = format!("a{a}.{i}");
                let (kind, desc) = attack::run_case(&mut rng, &target, &id, &stats).await;
                let kind = attack::KINDS.iter().position(|k| *k == kind);
                stats.case_done(kind.unwrap_or(0), desc);
                i += 1;
            }
        }));
    }
    for c in 0..n_clients {
        let stats = stats.clone();
        let kind = (c % 5) as usize;
        let db = if kind == 4 { "shop" } else { "app" };
        let u = url(port, "app", db);
        tasks.push(tokio::spawn(async move {
            clients::client_loop(u, kind, c as i64 + 1, seed ^ (c + 1000), until, &stats).await;
        }));
    }
    let mut threads = Vec::new();
    {
        let stats = stats.clone();
        threads.push(std::thread::spawn(move || {
            clients::psql_loop(port, seed, until, &stats)
        }));
    }
    let tmp = std::env::temp_dir();
    for mode in ["extended", "prepared"] {
        let (stats, tmp) = (stats.clone(), tmp.clone());
        let bench_secs = secs.saturating_sub(2).max(1);
        threads.push(std::thread::spawn(move || {
            clients::pgbench(port, mode, bench_secs, &tmp, &stats)
        }));
    }

    // RSS after warm-up, and the peak while running.
    let warm = Duration::from_secs((secs / 4).clamp(3, 20));
    tokio::time::sleep(warm).await;
    let rss_warm = rss_kib(pid).unwrap_or(0);
    let mut rss_peak = rss_warm;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kib(pid).unwrap_or(0));
    }
    for t in tasks {
        let _ = t.await;
    }
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let ran = start.elapsed();

    // Every client is gone: after a grace period nothing may be held.
    let mut last = Err("not checked".to_string());
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = held(port).await;
        if matches!(last, Ok(h) if h == Held::default()) {
            break;
        }
    }
    let busy_backends = pg.psql(
        "postgres",
        "SELECT count(*) FILTER (WHERE state <> 'idle') || ' ' || count(*) FROM pg_stat_activity WHERE usename = 'app'",
    );
    let fresh = fresh_client_ok(port).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_end = rss_kib(pid).unwrap_or(u64::MAX);
    let alive = p.try_wait().is_none();

    let g = Stats::get;
    let s = &stats;
    let cases = g(&s.cases);
    println!(
        "netfuzz summary: {cases} cases in {:.0} s ({:.0}/s; random {} startup {} scram {} session {}), \
         connect failures {}, session logins failed {}, mutated SCRAM logins that passed {}; \
         attacker: hangs {} wrong {}; clients: {} queries, {} ok, {} wrong, {} errors, {} missing, \
         pgbench {} tx; held after end: {last:?}; app backends (busy total): {busy_backends}; \
         fresh client: {fresh:?}; RSS KiB warm {rss_warm} peak {rss_peak} end {rss_end}; alive {alive}",
        ran.as_secs_f64(),
        cases as f64 / ran.as_secs_f64(),
        g(&s.cases_by_kind[0]),
        g(&s.cases_by_kind[1]),
        g(&s.cases_by_kind[2]),
        g(&s.cases_by_kind[3]),
        g(&s.connect_failed),
        g(&s.login_failed),
        g(&s.scram_survived),
        g(&s.attacker_hang),
        g(&s.attacker_wrong),
        g(&s.client_queries),
        g(&s.client_ok),
        g(&s.client_wrong),
        g(&s.client_error),
        g(&s.client_missing),
        g(&s.pgbench_tx),
    );
    let notes = s.notes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (t, n) in notes.iter().take(40) {
        println!("  failure at {:.1}s: {n}", (*t - start).as_secs_f64());
    }
    if let Some((first, _)) = notes.first() {
        let recent = s.recent.lock().unwrap_or_else(|e| e.into_inner());
        println!("attacker cases finished in the 3 s before the first failure:");
        for (t, d) in recent
            .iter()
            .filter(|(t, _)| *t <= *first && *first - *t < Duration::from_secs(3))
        {
            println!("  {:.1}s {d}", (*t - start).as_secs_f64());
        }
    }

    let mut problems = Vec::new();
    for (what, n) in [
        ("wrong answers to well-behaved clients", g(&s.client_wrong)),
        ("errors for well-behaved clients", g(&s.client_error)),
        (
            "missing answers (timeouts) for well-behaved clients",
            g(&s.client_missing),
        ),
        (
            "attacker sessions another session's answer reached",
            g(&s.attacker_wrong),
        ),
        (
            "well-formed attacker batches left unanswered",
            g(&s.attacker_hang),
        ),
    ] {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    if !alive {
        problems.push("pgvane exited".into());
    }
    match &last {
        Ok(h) if *h == Held::default() => {}
        other => problems.push(format!("held after all clients left: {other:?}")),
    }
    if busy_backends.split(' ').next() != Some("0") {
        problems.push(format!(
            "PostgreSQL backends of app not idle (busy total): {busy_backends}"
        ));
    }
    if let Err(e) = &fresh {
        problems.push(format!("a fresh client was not answered: {e}"));
    }
    if rss_end > rss_warm + 20 * 1024 {
        problems.push(format!(
            "RSS {rss_end} KiB > warm-up {rss_warm} KiB + 20 MiB"
        ));
    }
    if cases == 0 || g(&s.client_ok) == 0 {
        problems.push("nothing ran".into());
    }
    if !problems.is_empty() {
        let log = p.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        println!("--- pgvane log tail ---");
        for l in tail.iter().rev() {
            println!("{l}");
        }
    }
    p.kill();
    assert!(
        problems.is_empty(),
        "netfuzz (seed {seed}): {}",
        problems.join("; ")
    );
}

/// The distilled reproductions (`netfuzz/repro.rs`), each alone against its own pgvane with a pool of one
/// server connection: the session is answered, nothing stays held once it is gone, and a
/// fresh client (whose settings differ, so pgvane syncs them) gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netfuzz_reproductions() {
    let pg = PgServer::start();
    setup_schema(&pg);
    let mut failed = Vec::new();
    for (i, s) in repro::scenarios().iter().enumerate() {
        // A fresh pgvane per scenario, so one failure does not spill into the next.
        let p = Pgvane::start_fn(|port| config(port, pg.port(), 1));
        let port = p.port();
        let session = repro::run(port, s).await;
        let mut h = Err("not checked".to_string());
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            h = held(port).await;
            if matches!(h, Ok(x) if x == Held::default()) {
                break;
            }
        }
        let fresh = tokio::time::timeout(Duration::from_secs(5), async {
            let u = format!(
                "{} application_name=nf{i} options='-c work_mem={}kB'",
                url(port, "app", "app"),
                64 + i
            );
            let c = try_connect(&u).await.map_err(pg_err)?;
            let r = c
                .query_one(
                    "SELECT $1::int8 + 1, current_setting('work_mem')",
                    &[&(i as i64)],
                )
                .await;
            let r = r.map_err(pg_err)?;
            let got: (i64, String) = (r.get(0), r.get(1));
            let want = (i as i64 + 1, format!("{}kB", 64 + i));
            if got == want {
                Ok(())
            } else {
                Err(format!("got {got:?}, want {want:?}"))
            }
        })
        .await
        .unwrap_or_else(|_| Err("no answer in 5 s".to_string()));
        let ok = session.is_ok() && matches!(h, Ok(x) if x == Held::default()) && fresh.is_ok();
        println!(
            "repro {:<48} session {session:?}; held {h:?}; fresh client {fresh:?}",
            s.name
        );
        if !ok {
            failed.push(s.name);
        }
    }
    assert!(failed.is_empty(), "reproductions failing: {failed:?}");
}

/// Bisecting tool (ignored by default): one attacker alone against a pool of one server,
/// checking after every case that nothing is held and a fresh client is answered; stops at
/// the first case that breaks either and prints it. Same knobs as `network_fuzz`.
/// `PGVANE_NETFUZZ_SECS=60 cargo test --release --test netfuzz netfuzz_solo -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn netfuzz_solo() {
    let secs = env_u64("PGVANE_NETFUZZ_SECS", 60);
    let seed = env_u64("PGVANE_NETFUZZ_SEED", rand::random::<u32>() as u64);
    let kinds: Vec<attack::Kind> = match std::env::var("PGVANE_NETFUZZ_KINDS") {
        Ok(s) => attack::KINDS
            .into_iter()
            .filter(|k| s.contains(k.name()))
            .collect(),
        Err(_) => attack::KINDS.to_vec(),
    };
    println!("netfuzz_solo: seed {seed}, {secs} s, {kinds:?}");
    let pg = PgServer::start();
    setup_schema(&pg);
    let p = Pgvane::start_fn(|port| config(port, pg.port(), 1));
    let port = p.port();
    let stats = Stats::default();
    let target = attack::Target {
        port,
        dbs: vec!["app", "shop"],
        kinds,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < until {
        *wire::TRACE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        let (_, desc) = attack::run_case(&mut rng, &target, &format!("solo.{n}"), &stats).await;
        n += 1;
        let mut h = Err("not checked".to_string());
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            h = held(port).await;
            if matches!(h, Ok(x) if x == Held::default()) {
                break;
            }
        }
        let fresh = fresh_client_ok(port).await;
        let notes = stats
            .notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !notes.is_empty() || !matches!(h, Ok(x) if x == Held::default()) || fresh.is_err() {
            let notes: Vec<String> = notes.into_iter().map(|(_, n)| n).collect();
            let trace = wire::TRACE.lock().unwrap_or_else(|e| e.into_inner()).take();
            for (i, w) in trace.unwrap_or_default().iter().enumerate() {
                println!(
                    "write {i}: {}",
                    String::from_utf8_lossy(&w.escape_ascii().collect::<Vec<u8>>())
                );
            }
            panic!(
                "after {n} cases: {desc}\n  held {h:?}; fresh client {fresh:?}; notes {notes:?}"
            );
        }
    }
    println!("netfuzz_solo: {n} cases, none left anything behind");
}
