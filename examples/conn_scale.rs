//! Connection-scale load tool for pgvane's benchmark (`bench/compare.sh`).
//!
//! ```text
//! cargo run --release --example conn_scale -- HOST PORT USER PASSWORD DBNAME COUNT [ACTIVE]
//! ```
//!
//! 1. Opens COUNT client connections (at most `CONCURRENCY` logins in flight, default 200)
//!    and reports how long that took and how many failed.
//! 2. Holds them all idle for `HOLD_SECS` (default 5) and prints the line `HOLDING` first, so
//!    a script can measure the proxy's memory while they are held.
//! 3. Makes ACTIVE of them (default 1000, 0 = skip) run `SELECT 1` (simple protocol, so it
//!    works through any pooler in transaction mode) in a loop for `ACTIVE_SECS` (default 5)
//!    and reports queries/s and latency percentiles; prints `ACTIVE_DONE`, waits
//!    `HOLD_AFTER_SECS` (default 2), then closes everything.
//!
//! Output is `key=value` lines (plus the markers) so scripts can grep them; errors are
//! counted and the first few distinct messages printed on stderr. The soft RLIMIT_NOFILE is
//! raised to the hard limit first. Exit code 0 unless no connection could be opened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a non-negative integer, got {v:?}")),
        Err(_) => default,
    }
}

/// Raises the soft open-files limit to the hard limit; returns (soft, hard) afterwards.
fn raise_nofile() -> (libc::rlim_t, libc::rlim_t) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a properly initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl = want;
            }
        }
    }
    (rl.rlim_cur, rl.rlim_max)
}

/// Distinct error messages with their counts (first few kept verbatim).
#[derive(Default)]
struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    fn add(&self, e: impl std::fmt::Display) {
        let mut m = self.0.lock().unwrap();
        let msg = e.to_string();
        if m.len() < 20 || m.contains_key(&msg) {
            *m.entry(msg).or_default() += 1;
        } else {
            *m.entry("(other errors)".into()).or_default() += 1;
        }
    }
    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
    fn report(&self, phase: &str) {
        for (msg, n) in self.0.lock().unwrap().iter() {
            eprintln!("{phase} error x{n}: {msg}");
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 || args.len() > 7 {
        eprintln!("usage: conn_scale HOST PORT USER PASSWORD DBNAME COUNT [ACTIVE]");
        eprintln!("env: CONCURRENCY (200) HOLD_SECS (5) ACTIVE_SECS (5) HOLD_AFTER_SECS (2) CONNECT_TIMEOUT_SECS (60)");
        std::process::exit(2);
    }
    let (host, port, user, password, dbname) = (&args[0], &args[1], &args[2], &args[3], &args[4]);
    let port: u16 = port.parse().expect("PORT must be a number");
    let count: usize = args[5].parse().expect("COUNT must be a number");
    let active: usize = args
        .get(6)
        .map_or(1000, |a| a.parse().expect("ACTIVE must be a number"));
    let concurrency = env_num("CONCURRENCY", 200).max(1) as usize;
    let hold = Duration::from_secs(env_num("HOLD_SECS", 5));
    let active_secs = Duration::from_secs(env_num("ACTIVE_SECS", 5));
    let hold_after = Duration::from_secs(env_num("HOLD_AFTER_SECS", 2));
    let connect_timeout = Duration::from_secs(env_num("CONNECT_TIMEOUT_SECS", 60));

    let (soft, hard) = raise_nofile();
    println!("nofile_soft={soft} nofile_hard={hard}");
    if (soft as usize) < count + 64 {
        eprintln!(
            "warning: open-files limit {soft} is below COUNT {count} (+64): expect EMFILE errors"
        );
    }

    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .application_name("conn_scale")
        .connect_timeout(connect_timeout);
    let config = Arc::new(config);

    // Phase 1: open.
    let sem = Arc::new(Semaphore::new(concurrency));
    let open_errors = Arc::new(Errors::default());
    let conn_errors = Arc::new(Errors::default());
    let closing = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..count {
        let (sem, config, open_errors) = (sem.clone(), config.clone(), open_errors.clone());
        let (conn_errors, closing) = (conn_errors.clone(), closing.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            if !closing.load(Ordering::Relaxed) {
                                conn_errors.add(e);
                            }
                        }
                    });
                    Some(client)
                }
                Err(e) => {
                    open_errors.add(e);
                    None
                }
            }
        });
    }
    let mut clients: Vec<Client> = Vec::with_capacity(count);
    while let Some(r) = set.join_next().await {
        if let Some(c) = r.expect("connect task panicked") {
            clients.push(c);
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    println!(
        "opened={} failed={} open_secs={:.3} open_per_sec={:.0}",
        clients.len(),
        open_errors.total(),
        open_secs,
        clients.len() as f64 / open_secs
    );
    open_errors.report("open");
    if clients.is_empty() {
        eprintln!("no connection could be opened");
        std::process::exit(1);
    }

    // Phase 2: hold idle.
    println!("HOLDING");
    tokio::time::sleep(hold).await;
    println!("conn_errors_while_idle={}", conn_errors.total());

    // Phase 3: some of them active.
    let active = active.min(clients.len());
    if active > 0 {
        let clients = Arc::new(clients);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let query_errors = Arc::new(Errors::default());
        let lat_all = Arc::new(Mutex::new(Vec::<u32>::new()));
        // Wait for every worker to be ready so they start together.
        let barrier = Arc::new(tokio::sync::Barrier::new(active + 1));
        let mut workers = JoinSet::new();
        for i in 0..active {
            let (clients, stop, done) = (clients.clone(), stop.clone(), done.clone());
            let (query_errors, lat_all, barrier) =
                (query_errors.clone(), lat_all.clone(), barrier.clone());
            workers.spawn(async move {
                // Spread the active ones over the whole set of connections.
                let c = &clients[i * clients.len() / active];
                let mut lat = Vec::with_capacity(4096);
                barrier.wait().await;
                while !stop.load(Ordering::Relaxed) {
                    let q0 = Instant::now();
                    match c.simple_query("SELECT 1").await {
                        Ok(_) => {
                            lat.push(q0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            query_errors.add(e);
                            if c.is_closed() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                lat_all.lock().unwrap().extend(lat);
            });
        }
        barrier.wait().await;
        let t1 = Instant::now();
        tokio::time::sleep(active_secs).await;
        let n = done.load(Ordering::Relaxed);
        let secs = t1.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        while workers.join_next().await.is_some() {}
        let mut lat = std::mem::take(&mut *lat_all.lock().unwrap());
        lat.sort_unstable();
        let mean = if lat.is_empty() {
            f64::NAN
        } else {
            lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1000.0
        };
        println!(
            "active={} queries={} active_secs={:.3} qps={:.0} lat_mean_ms={:.3} lat_p50_ms={:.3} lat_p99_ms={:.3} query_errors={}",
            active,
            n,
            secs,
            n as f64 / secs,
            mean,
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            query_errors.total()
        );
        query_errors.report("query");
        println!("ACTIVE_DONE");
        tokio::time::sleep(hold_after).await;
        let open_at_end = clients.iter().filter(|c| !c.is_closed()).count();
        println!("open_at_end={open_at_end}");
        closing.store(true, Ordering::Relaxed);
        drop(clients);
    } else {
        println!("ACTIVE_DONE");
        let open_at_end = clients.iter().filter(|c| !c.is_closed()).count();
        println!("open_at_end={open_at_end}");
        closing.store(true, Ordering::Relaxed);
        drop(clients);
    }
    conn_errors.report("connection");
    // Give the connection tasks a moment to send Terminate.
    tokio::time::sleep(Duration::from_millis(300)).await;
}
