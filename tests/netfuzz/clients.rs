//! Well-behaved clients for the network fuzz test: every answer is known and checked.
//!
//! Owns: tokio-postgres clients looping on queries with known results (extended protocol
//! with random values, simple-protocol literals, pipelined queries on one connection, a
//! transaction writing and reading its own row, a sharded insert/read checked against the
//! shard PostgreSQL's hash puts the key on), psql runs, and pgbench runs; each query has a
//! deadline, and every wrong, failed or missing answer is counted with what was asked.
//!
//! Must not: send anything a PostgreSQL server would not answer correctly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::timeout;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::Stats;

const QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Outcome of one checked operation.
enum Check {
    Ok,
    Wrong(String),
    Error(String),
}

fn expect<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Check {
    if got == want {
        Check::Ok
    } else {
        Check::Wrong(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Expected shard database for a `customer_id` on the 2-shard database.
fn shard_db(key: i64) -> String {
    use pgvane::sharding::hash::{shard_of_text, KeyType};
    let i = shard_of_text(&key.to_string(), KeyType::Int8, 2).unwrap_or(u32::MAX);
    format!("nf_shard_{i}")
}

async fn one_op(c: &Client, kind: usize, me: i64, n: i64, rng: &mut StdRng) -> Check {
    let v: i64 = rng.gen_range(-1_000_000_000..1_000_000_000);
    let res: Result<Check, tokio_postgres::Error> = async {
        Ok(match kind {
            0 => {
                let tag = format!("c{me}-{n}");
                let r = c
                    .query_one("SELECT $1::int8 + 1, $2::text", &[&v, &tag])
                    .await?;
                expect("prepared", (r.get::<_, i64>(0), r.get::<_, String>(1)), (v + 1, tag))
            }
            1 => {
                let tag = format!("s{me}-{n}");
                let m = c
                    .simple_query(&format!("SELECT {v}::int8 * 2, '{tag}'"))
                    .await?;
                expect("simple", simple_rows(&m), vec![vec![(v * 2).to_string(), tag]])
            }
            2 => {
                // Three queries in flight on one connection: each must get its own row.
                let (a, b, d) = (v, v ^ 0x5555, v / 3);
                let q = "SELECT $1::int8";
                let (ra, rb, rd) =
                    join3(c.query_one(q, &[&a]), c.query_one(q, &[&b]), c.query_one(q, &[&d]))
                        .await;
                let got = (ra?.get::<_, i64>(0), rb?.get::<_, i64>(0), rd?.get::<_, i64>(0));
                expect("pipelined", got, (a, b, d))
            }
            3 => {
                // A transaction writing and reading its own row.
                c.batch_execute("BEGIN").await?;
                c.execute("INSERT INTO nf_own(client, n, v) VALUES ($1, $2, $3)", &[&me, &n, &v])
                    .await?;
                let r = c
                    .query_one("SELECT v FROM nf_own WHERE client = $1 AND n = $2", &[&me, &n])
                    .await?;
                let got: i64 = r.get(0);
                let commit = rng.gen_bool(0.5);
                c.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" }).await?;
                let after = c
                    .query("SELECT v FROM nf_own WHERE client = $1 AND n = $2", &[&me, &n])
                    .await?;
                c.execute("DELETE FROM nf_own WHERE client = $1", &[&me]).await?;
                let kept: Vec<i64> = after.iter().map(|r| r.get(0)).collect();
                let want_kept = if commit { vec![v] } else { vec![] };
                expect("transaction", (got, kept), (v, want_kept))
            }
            _ => {
                // Sharded: the row goes to the shard PostgreSQL's hash puts it on.
                let key = me * 1_000_000 + n;
                c.execute("INSERT INTO orders VALUES ($1, $2, $3)", &[&key, &n, &(v as i32)])
                    .await?;
                let r = c
                    .query_one(
                        "SELECT current_database()::text, amount FROM orders WHERE customer_id = $1 AND id = $2",
                        &[&key, &n],
                    )
                    .await?;
                let got = (r.get::<_, String>(0), r.get::<_, i32>(1));
                let del = c
                    .execute("DELETE FROM orders WHERE customer_id = $1", &[&key])
                    .await?;
                expect("sharded", (got, del), ((shard_db(key), v as i32), 1))
            }
        })
    }
    .await;
    match res {
        Ok(c) => c,
        Err(e) => Check::Error(format!("{e} ({:?})", e.code().map(|c| c.code()))),
    }
}

/// One tokio-postgres client of `kind` until `until`; reconnects after failures and, now
/// and then, to churn logins.
pub async fn client_loop(
    url: String,
    kind: usize,
    me: i64,
    seed: u64,
    until: Instant,
    stats: &Stats,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0i64;
    'connect: while Instant::now() < until {
        let conn = timeout(
            QUERY_TIMEOUT,
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await;
        let client = match conn {
            Ok(Ok((client, conn))) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
            Ok(Err(e)) => {
                stats.fail(&stats.client_error, format!("client {me} connect: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                stats.fail(
                    &stats.client_missing,
                    format!("client {me} connect: timeout"),
                );
                continue;
            }
        };
        let reconnect_after = rng.gen_range(20..200);
        for _ in 0..reconnect_after {
            if Instant::now() >= until {
                break 'connect;
            }
            n += 1;
            stats.bump(&stats.client_queries);
            let what = ["prepared", "simple", "pipelined", "transaction", "sharded"][kind];
            match timeout(QUERY_TIMEOUT, one_op(&client, kind, me, n, &mut rng)).await {
                Ok(Check::Ok) => stats.bump(&stats.client_ok),
                Ok(Check::Wrong(m)) => {
                    stats.fail(&stats.client_wrong, format!("client {me} {what} #{n}: {m}"));
                    continue 'connect;
                }
                Ok(Check::Error(m)) => {
                    stats.fail(&stats.client_error, format!("client {me} {what} #{n}: {m}"));
                    continue 'connect;
                }
                Err(_) => {
                    let m = format!("client {me} {what} #{n}: no answer in {QUERY_TIMEOUT:?}");
                    stats.fail(&stats.client_missing, m);
                    continue 'connect;
                }
            }
        }
    }
}

/// Waits for a child with a deadline; kills it (by its own pid) when the deadline passes.
fn wait_child(mut child: std::process::Child, limit: Duration) -> Option<std::process::Output> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// psql runs of `SELECT <v> + 1` until `until` (blocking; run on its own thread).
pub fn psql_loop(port: u16, seed: u64, until: Instant, stats: &Stats) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        let v: i64 = rng.gen_range(0..1_000_000_000);
        let mut cmd = super::common::psql_cmd(port, "app", "app", Some("app-secret"));
        cmd.args(["-c", &format!("SELECT {v} + 1")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        stats.bump(&stats.client_queries);
        let Ok(child) = cmd.spawn() else { break };
        match wait_child(child, QUERY_TIMEOUT) {
            None => stats.fail(
                &stats.client_missing,
                format!("psql SELECT {v} + 1: no answer"),
            ),
            Some(out) => {
                let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() && got == (v + 1).to_string() {
                    stats.bump(&stats.client_ok);
                } else {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let m = format!("psql SELECT {v} + 1: got {got:?} ({}) {err}", out.status);
                    stats.fail(&stats.client_wrong, m);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..300)));
    }
}

/// One pgbench run (`-M mode`, 2 clients) for `secs`; it must finish in time with no
/// failed transaction. Blocking.
pub fn pgbench(port: u16, mode: &str, secs: u64, dir: &std::path::Path, stats: &Stats) {
    let script = dir.join(format!("netfuzz-{mode}.sql"));
    let body =
        "\\set v random(1, 1000000000)\nSELECT :v::int8 + 1;\nBEGIN;\nSELECT :v::int8 * 2;\nEND;\n";
    if std::fs::write(&script, body).is_err() {
        return;
    }
    let mut cmd = Command::new(super::common::bin("pgbench"));
    super::common::util::scrub_pg_env(&mut cmd);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "app",
        "-n",
    ])
    .args([
        "-c",
        "2",
        "-j",
        "1",
        "-T",
        &secs.to_string(),
        "-M",
        mode,
        "-f",
    ])
    .arg(&script)
    .arg("app")
    .env("PGPASSWORD", "app-secret")
    .env("PGSSLMODE", "disable")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let Ok(child) = cmd.spawn() else { return };
    stats.bump(&stats.client_queries);
    match wait_child(child, Duration::from_secs(secs + 15)) {
        None => stats.fail(
            &stats.client_missing,
            format!("pgbench -M {mode} -T {secs}: still running 15 s after its end"),
        ),
        Some(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let done = text
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|s| s.split('/').next()?.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let failed = text
                .lines()
                .find_map(|l| l.strip_prefix("number of failed transactions: "))
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            stats.add(&stats.pgbench_tx, done);
            if out.status.success() && failed == Some(0) && done > 0 {
                stats.bump(&stats.client_ok);
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" / ");
                let m = format!(
                    "pgbench -M {mode}: {} done={done} failed={failed:?}: {tail}",
                    out.status
                );
                stats.fail(&stats.client_wrong, m);
            }
        }
    }
}
