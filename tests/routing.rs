//! Read/write splitting against real streaming replication: a primary and two replicas made
//! with pg_basebackup -R, replay paused on demand to create lag.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

struct Cluster {
    primary: PgServer,
    replicas: Vec<PgServer>,
}

fn cluster(n: usize) -> Cluster {
    let primary = PgServer::start();
    let replicas = (0..n).map(|_| primary.start_replica()).collect();
    Cluster { primary, replicas }
}

fn config(listen: u16, c: &Cluster, routing: &str) -> String {
    let replicas: Vec<String> = c
        .replicas
        .iter()
        .map(|r| {
            format!(
                "{{ host = \"127.0.0.1\", port = {}, dbname = \"app\" }}",
                r.port()
            )
        })
        .collect();
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
default_pool_size = 4
query_wait_timeout = "10s"

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {}, dbname = "app" }}
  replicas = [ {} ]
  [databases.routing]
  lag_check_interval = "50ms"
  {routing}
"#,
        c.primary.port(),
        replicas.join(", ")
    )
}

fn url(p: &Pgvane) -> String {
    format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=app",
        p.port()
    )
}

async fn port_of(c: &tokio_postgres::Client, sql: &str) -> i32 {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap().parse().unwrap();
        }
    }
    panic!("no row from {sql}");
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Wait until the monitor reports something (polls a condition up to `secs`).
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_to_replicas_writes_to_primary() {
    let c = cluster(2);
    let p = Pgvane::start(&config(free_port(), &c, ""));
    let primary = c.primary.port() as i32;
    let replica_ports: HashSet<i32> = c.replicas.iter().map(|r| r.port() as i32).collect();
    let cl = connect(&url(&p)).await;
    c.primary.psql(
        "app",
        "CREATE TABLE rw(id serial primary key, v text); CREATE SEQUENCE rw_seq;
         CREATE FUNCTION bump() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION calm() RETURNS int STABLE LANGUAGE sql AS 'SELECT 1';",
    );
    for r in &c.replicas {
        r.wait_replay_caught_up(&c.primary);
    }

    // Reads spread over both replicas (round robin), simple and extended protocol.
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let port = port_of(&cl, "SELECT inet_server_port(), pg_is_in_recovery()").await;
        assert!(replica_ports.contains(&port), "read went to {port}");
        seen.insert(port);
    }
    assert_eq!(seen, replica_ports, "round robin uses both replicas");
    let row = cl
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(1), "extended-protocol read on a replica");

    // Writes and write-like reads go to the primary.
    for sql in [
        "INSERT INTO rw(v) VALUES ('x') RETURNING inet_server_port()",
        "SELECT inet_server_port() FROM (SELECT nextval('rw_seq')) s",
        "SELECT inet_server_port() FROM rw FOR UPDATE",
        "SELECT inet_server_port() FROM (SELECT bump()) s",
        "WITH d AS (DELETE FROM rw WHERE id < 0 RETURNING 1) SELECT inet_server_port()",
    ] {
        assert_eq!(port_of(&cl, sql).await, primary, "{sql}");
    }
    // This client just wrote: read-your-writes may keep it on the primary until the replicas
    // replay its commit. Reads from a client that did not write show the classification.
    let cl = connect(&url(&p)).await;
    // A stable user function is a read.
    assert!(replica_ports
        .contains(&port_of(&cl, "SELECT inet_server_port() FROM (SELECT calm()) s").await));

    // Transactions: BEGIN READ ONLY to a replica, BEGIN to the primary.
    cl.batch_execute("BEGIN READ ONLY").await.unwrap();
    let p1 = port_of(&cl, "SELECT inet_server_port()").await;
    let p2 = port_of(&cl, "SELECT inet_server_port()").await;
    cl.batch_execute("COMMIT").await.unwrap();
    assert!(replica_ports.contains(&p1));
    assert_eq!(p1, p2, "a transaction stays on one server");
    cl.batch_execute("BEGIN").await.unwrap();
    assert_eq!(port_of(&cl, "SELECT inet_server_port()").await, primary);
    cl.batch_execute("COMMIT").await.unwrap();

    // Hints and the session route.
    assert_eq!(
        port_of(&cl, "/* pgvane: primary */ SELECT inet_server_port()").await,
        primary
    );
    cl.batch_execute("SET pgvane.route = 'primary'")
        .await
        .unwrap();
    assert_eq!(port_of(&cl, "SELECT inet_server_port()").await, primary);
    let shown = cl.simple_query("SHOW pgvane.route").await.unwrap();
    assert!(
        matches!(&shown[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("primary"))
    );
    cl.batch_execute("SET pgvane.route = 'auto'").await.unwrap();
    assert!(replica_ports.contains(&port_of(&cl, "SELECT inet_server_port()").await));
    let e = cl
        .batch_execute("SET pgvane.route = 'sideways'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");

    // EXPLAIN ROUTE answers without running the statement.
    let rows = cl
        .simple_query("EXPLAIN ROUTE DELETE FROM rw")
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().to_string(), r.get(2).unwrap().to_string()))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(row.0, "primary");
    assert!(!row.1.is_empty());
    let n: i64 = c
        .primary
        .psql("app", "SELECT count(*) FROM rw")
        .parse()
        .unwrap();
    assert_eq!(n, 1, "EXPLAIN ROUTE did not run the DELETE");

    // Something the parser cannot read goes to the primary and still works.
    let port = port_of(
        &cl,
        "SELECT inet_server_port() FROM ROWS FROM (generate_series(1, 1)) AS t(x)",
    )
    .await;
    assert_eq!(port, primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_modes_spread_reads() {
    let c = cluster(2);
    let replica_ports: HashSet<i32> = c.replicas.iter().map(|r| r.port() as i32).collect();
    for mode in ["random", "least_connections"] {
        let p = Pgvane::start(&config(
            free_port(),
            &c,
            &format!("load_balancing = \"{mode}\""),
        ));
        let u = url(&p);
        let clients: Vec<_> = futures_util::future::join_all((0..4).map(|_| connect(&u))).await;
        let mut seen = HashSet::new();
        // The monitor admits each replica after its first probe; within a few seconds every
        // read must have gone to a replica and both replicas must have served some.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut round = 0;
        while seen != replica_ports && Instant::now() < deadline {
            let port = port_of(&clients[round % clients.len()], "SELECT inet_server_port()").await;
            assert!(replica_ports.contains(&port) || port == c.primary.port() as i32);
            if replica_ports.contains(&port) {
                seen.insert(port);
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(seen, replica_ports, "{mode} used both replicas");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_bounds_and_read_your_writes() {
    let c = cluster(2);
    let p = Pgvane::start(&config(free_port(), &c, "max_replica_lag_bytes = 65536"));
    let primary = c.primary.port() as i32;
    let (r0, r1) = (c.replicas[0].port() as i32, c.replicas[1].port() as i32);
    c.primary
        .psql("app", "CREATE TABLE ryw(id int primary key, pad text)");
    for r in &c.replicas {
        r.wait_replay_caught_up(&c.primary);
    }
    let reader = connect(&url(&p)).await;
    // Replica 0 paused and far behind: it stops getting reads.
    c.replicas[0].pause_replay();
    c.primary.psql(
        "app",
        "INSERT INTO ryw SELECT g, repeat('x', 1000) FROM generate_series(1000, 1400) g",
    );
    assert!(
        eventually(10, || async {
            let mut ports = HashSet::new();
            for _ in 0..6 {
                ports.insert(port_of(&reader, "SELECT inet_server_port()").await);
            }
            ports == HashSet::from([r1])
        })
        .await,
        "lagging replica still gets reads\n{}",
        p.log()
    );
    c.replicas[0].resume_replay();
    assert!(
        eventually(15, || async {
            let mut ports = HashSet::new();
            for _ in 0..6 {
                ports.insert(port_of(&reader, "SELECT inet_server_port()").await);
            }
            ports.contains(&r0)
        })
        .await,
        "caught-up replica gets reads again"
    );

    // Both replicas paused: a writer reads its own write at once; others stay on replicas.
    for r in &c.replicas {
        r.wait_replay_caught_up(&c.primary);
        r.pause_replay();
    }
    let writer = connect(&url(&p)).await;
    writer
        .batch_execute("INSERT INTO ryw VALUES (1, 'mine')")
        .await
        .unwrap();
    let rows = writer
        .query("SELECT pad, inet_server_port() FROM ryw WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "read-your-writes: the row is visible at once"
    );
    assert_eq!(rows[0].get::<_, i32>(1), primary);
    let port = port_of(&reader, "SELECT inet_server_port()").await;
    assert!(
        port == r0 || port == r1,
        "a client that did not write keeps reading from replicas"
    );
    let other = reader
        .query("SELECT 1 FROM ryw WHERE id = 1", &[])
        .await
        .unwrap();
    assert!(
        other.is_empty(),
        "the reader sees the replica's (older) state"
    );

    // The handoff: another connection adopts the writer's LSN.
    let lsn_rows = writer
        .simple_query("SHOW pgvane.last_write_lsn")
        .await
        .unwrap();
    let lsn = lsn_rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    assert_ne!(lsn, "0/0");
    let handoff = connect(&url(&p)).await;
    handoff
        .batch_execute(&format!("SET pgvane.min_lsn = '{lsn}'"))
        .await
        .unwrap();
    let rows = handoff
        .query("SELECT pad FROM ryw WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "min_lsn handoff sees the write");

    // Once the replicas catch up, the writer reads from them again.
    for r in &c.replicas {
        r.resume_replay();
        r.wait_replay_caught_up(&c.primary);
    }
    assert!(
        eventually(10, || async {
            port_of(&writer, "SELECT inet_server_port()").await != primary
        })
        .await,
        "reads return to replicas after catch-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_failure_and_primary_outage() {
    let mut c = cluster(2);
    let p = Pgvane::start(&config(free_port(), &c, ""));
    let cl = connect(&url(&p)).await;
    c.primary.psql("app", "CREATE TABLE fo(x int)");
    for r in &c.replicas {
        r.wait_replay_caught_up(&c.primary);
    }
    for _ in 0..4 {
        port_of(&cl, "SELECT inet_server_port()").await;
    }
    // Reads running on a replica when it dies are retried on the primary, invisibly.
    let u = url(&p);
    let inflight: Vec<_> = (0..4)
        .map(|_| {
            let u = u.clone();
            tokio::spawn(async move {
                let cl = connect(&u).await;
                cl.simple_query("SELECT pg_sleep(1.5), inet_server_port()")
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.replicas[0].kill_immediate();
    for t in inflight {
        let r = t.await.unwrap();
        assert!(r.is_ok(), "in-flight read failed: {r:?}\n{}", p.log());
    }
    let survivor = c.replicas[1].port() as i32;
    let primary = c.primary.port() as i32;
    for i in 0..30 {
        let rows = cl.simple_query("SELECT inet_server_port()").await;
        let rows = rows
            .unwrap_or_else(|e| panic!("read {i} failed after a replica died: {e:?}\n{}", p.log()));
        let port: i32 = match &rows[1] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(port == survivor || port == primary);
    }
    // Primary down: writes fail with 08006, reads still work.
    c.primary.kill_immediate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = cl
        .batch_execute("INSERT INTO fo VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "08006", "{e:?}");
    let port = port_of(&cl, "SELECT inet_server_port()").await;
    assert_eq!(port, survivor);
}
