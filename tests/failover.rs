//! Reproduction 9: a replica stopped with `-m immediate` under many reading clients. Every
//! read that failed before any answer reached its client is retried on the primary, so no
//! client sees an error — with the simple and the extended protocol.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_stopped_immediately_under_load_costs_no_read() {
    let primary = PgServer::start();
    let mut replica = primary.start_replica();
    let p = Pgvane::start_fn(|port| {
        format!(
            r#"
[general]
listen_addr = "127.0.0.1:{port}"
default_pool_size = 10
query_wait_timeout = "10s"

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {}, dbname = "app" }}
  replicas = [{{ host = "127.0.0.1", port = {}, dbname = "app" }}]
  [databases.routing]
  lag_check_interval = "50ms"
"#,
            primary.port(),
            replica.port()
        )
    });
    let url = format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=app",
        p.port()
    );
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (url, ok, errors) = (url.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let cl = connect(&url).await;
            let stmt = cl.prepare("SELECT $1::int8 + 1").await.ok();
            let mut n: i64 = i;
            while Instant::now() < stop_at {
                n += 1;
                let r: Result<i64, String> = if i % 2 == 0 {
                    match cl.simple_query(&format!("SELECT {n} + 1")).await {
                        Ok(m) => m
                            .iter()
                            .find_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => {
                                    r.get(0).and_then(|v| v.parse().ok())
                                }
                                _ => None,
                            })
                            .ok_or_else(|| "no row".to_string()),
                        Err(e) => Err(format!("simple: {e:?}")),
                    }
                } else {
                    let q = match &stmt {
                        Some(s) => cl.query_one(s, &[&n]).await,
                        None => cl.query_one("SELECT $1::int8 + 1", &[&n]).await,
                    };
                    q.map(|r| r.get::<_, i64>(0))
                        .map_err(|e| format!("extended: {e:?}"))
                };
                match r {
                    Ok(v) if v == n + 1 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(v) => errors
                        .lock()
                        .unwrap()
                        .push(format!("wrong answer {v} for {n}")),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replica.kill_immediate();
    for t in tasks {
        t.await.expect("client task");
    }
    let errors = errors.lock().unwrap().clone();
    eprintln!(
        "reads ok: {}, failed: {}",
        ok.load(Ordering::Relaxed),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} reads failed (of {}), first: {:?}\n{}",
        errors.len(),
        ok.load(Ordering::Relaxed) + errors.len() as u64,
        errors.iter().take(5).collect::<Vec<_>>(),
        p.log()
    );
    assert!(ok.load(Ordering::Relaxed) > 1000);
}
