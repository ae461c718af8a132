//! The admin console (`psql -p 6432 -U admin pgvane`): every SHOW with PgBouncer's column
//! names, the control commands (PAUSE/RESUME, DISABLE/ENABLE, KILL, RECONNECT, SET, RELOAD,
//! SHUTDOWN), permissions, and protocol corner cases. Real clients: tokio-postgres
//! (simple query protocol) and psql.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN_PASSWORD: &str = "admin-secret";
const STATS_PASSWORD: &str = "stats-secret";

/// A config in front of `pg_port`: users app, admin (admin_users), stats (stats_users);
/// databases app and other (both the shared server's `app`), plus `extra` TOML at the end.
fn config(listen: u16, pg_port: u16, general: &str, extra: &str) -> String {
    let pool = if general.contains("default_pool_size") {
        ""
    } else {
        "default_pool_size = 5"
    };
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
admin_users = ["admin"]
stats_users = ["stats"]
shutdown_timeout = "5s"
{pool}
{general}

[[users]]
name = "app"
password = "app-secret"

[[users]]
name = "admin"
password = "{ADMIN_PASSWORD}"

[[users]]
name = "stats"
password = "{STATS_PASSWORD}"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}

[[databases]]
name = "other"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}
{extra}
"#
    )
}

fn start(general: &str) -> Pgvane {
    let pg = shared();
    Pgvane::start_fn(|port| config(port, pg.port(), general, ""))
}

fn url(p: &Pgvane, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=10 application_name=admin_test",
        p.port()
    )
}

async fn app_client(p: &Pgvane, db: &str) -> Client {
    connect(&url(p, "app", APP_PASSWORD, db)).await
}

async fn admin(p: &Pgvane) -> Client {
    connect(&url(p, "admin", ADMIN_PASSWORD, "pgvane")).await
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// A result set: column names and rows as name → value.
struct Rows {
    columns: Vec<String>,
    rows: Vec<HashMap<String, Option<String>>>,
}

impl Rows {
    fn find(&self, key: &str, value: &str) -> Option<&HashMap<String, Option<String>>> {
        self.rows
            .iter()
            .find(|r| r.get(key).and_then(|v| v.as_deref()) == Some(value))
    }

    fn get<'a>(row: &'a HashMap<String, Option<String>>, col: &str) -> &'a str {
        row.get(col)
            .unwrap_or_else(|| panic!("no column {col}"))
            .as_deref()
            .unwrap_or("")
    }
}

async fn show(c: &Client, cmd: &str) -> Rows {
    let msgs = c
        .simple_query(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e} ({})", message(&e)));
    let mut out = Rows {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                out.columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                let row = r
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).map(str::to_string)))
                    .collect();
                out.rows.push(row);
            }
            _ => {}
        }
    }
    out
}

fn assert_prefix(cmd: &str, got: &[String], want: &[&str]) {
    let head: Vec<&str> = got.iter().take(want.len()).map(String::as_str).collect();
    assert_eq!(head, want, "{cmd}: columns {got:?}");
}

const POOLS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
];
const STATS: &[&str] = &[
    "database",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
];
const CONNS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
];
const DATABASES: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncer_columns() {
    let pg = shared();
    let replica = shared_replica();
    let ro = format!(
        r#"
[[databases]]
name = "ro"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {}, dbname = "app" }}
  replicas = [{{ host = "127.0.0.1", port = {}, dbname = "app" }}]
"#,
        pg.port(),
        replica.port()
    );
    let p = Pgvane::start_fn(|port| config(port, pg.port(), "", &ro));
    // Traffic first, and a client that stays connected.
    let c = app_client(&p, "app").await;
    for _ in 0..5 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let r = app_client(&p, "ro").await;
    r.simple_query("SELECT 1").await.unwrap();
    let a = admin(&p).await;

    let pools = show(&a, "SHOW POOLS").await;
    assert_prefix("SHOW POOLS", &pools.columns, POOLS);
    for extra in ["backend", "shard", "role", "pool_size", "paused"] {
        assert!(pools.columns.iter().any(|c| c == extra), "{extra}");
    }
    let row = pools
        .rows
        .iter()
        .find(|r| Rows::get(r, "database") == "app" && Rows::get(r, "user") == "app")
        .expect("pool app/app");
    assert_eq!(Rows::get(row, "cl_active"), "1");
    assert_eq!(Rows::get(row, "pool_mode"), "transaction");
    assert_eq!(Rows::get(row, "pool_size"), "5");
    assert_eq!(Rows::get(row, "role"), "primary");
    let servers: u64 = Rows::get(row, "sv_idle").parse::<u64>().unwrap()
        + Rows::get(row, "sv_active").parse::<u64>().unwrap();
    assert!(servers >= 1, "{row:?}");
    assert!(
        pools
            .rows
            .iter()
            .any(|r| Rows::get(r, "database") == "ro" && Rows::get(r, "role") == "replica"),
        "replica pool listed"
    );

    let stats = show(&a, "SHOW STATS").await;
    assert_prefix("SHOW STATS", &stats.columns, STATS);
    let app_stats = stats.find("database", "app").expect("stats of app");
    assert!(
        Rows::get(app_stats, "total_xact_count")
            .parse::<u64>()
            .unwrap()
            >= 5
    );
    assert!(
        Rows::get(app_stats, "total_query_count")
            .parse::<u64>()
            .unwrap()
            >= 5
    );
    assert!(
        Rows::get(app_stats, "total_received")
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(Rows::get(app_stats, "total_sent").parse::<u64>().unwrap() > 0);

    let totals = show(&a, "show stats_totals;").await;
    assert_prefix(
        "SHOW STATS_TOTALS",
        &totals.columns,
        &[
            "database",
            "xact_count",
            "query_count",
            "bytes_received",
            "bytes_sent",
            "xact_time",
            "query_time",
            "wait_time",
        ],
    );
    let avgs = show(&a, "SHOW STATS_AVERAGES").await;
    assert_eq!(
        avgs.columns[..8],
        totals.columns[..8],
        "SHOW STATS_AVERAGES"
    );

    let clients = show(&a, "SHOW CLIENTS").await;
    assert_prefix("SHOW CLIENTS", &clients.columns, CONNS);
    let me = clients
        .rows
        .iter()
        .find(|r| Rows::get(r, "database") == "app")
        .expect("client row");
    assert_eq!(Rows::get(me, "type"), "C");
    assert_eq!(Rows::get(me, "user"), "app");
    assert_eq!(Rows::get(me, "state"), "idle");
    assert_eq!(Rows::get(me, "addr"), "127.0.0.1");
    assert_eq!(Rows::get(me, "application_name"), "admin_test");
    assert!(Rows::get(me, "connect_time").ends_with(" UTC"));

    let servers = show(&a, "SHOW SERVERS").await;
    assert_prefix("SHOW SERVERS", &servers.columns, CONNS);
    let s = servers
        .rows
        .iter()
        .find(|r| Rows::get(r, "database") == "app")
        .expect("a server of app");
    assert_eq!(Rows::get(s, "type"), "S");
    assert_eq!(Rows::get(s, "port"), pg.port().to_string());
    assert!(Rows::get(s, "remote_pid").parse::<i32>().unwrap() > 0);

    let dbs = show(&a, "SHOW DATABASES").await;
    assert_prefix("SHOW DATABASES", &dbs.columns, DATABASES);
    let d = dbs.find("name", "app").expect("database app");
    assert_eq!(Rows::get(d, "port"), pg.port().to_string());
    assert_eq!(Rows::get(d, "paused"), "0");
    assert_eq!(Rows::get(d, "disabled"), "0");
    assert!(
        dbs.find("name", "pgvane").is_some(),
        "the console's own database"
    );
    assert_eq!(Rows::get(dbs.find("name", "ro").unwrap(), "replicas"), "1");

    let users = show(&a, "SHOW USERS").await;
    assert_prefix("SHOW USERS", &users.columns, &["name", "pool_mode"]);
    assert_eq!(
        Rows::get(users.find("name", "admin").unwrap(), "console"),
        "admin"
    );
    assert_eq!(
        Rows::get(users.find("name", "stats").unwrap(), "console"),
        "stats"
    );

    let lists = show(&a, "SHOW LISTS").await;
    assert_eq!(lists.columns, vec!["list", "items"]);
    let pools_n = Rows::get(lists.find("list", "pools").unwrap(), "items");
    assert!(pools_n.parse::<u64>().unwrap() >= 2);
    assert_eq!(
        Rows::get(lists.find("list", "databases").unwrap(), "items"),
        "3"
    );
    assert_eq!(
        Rows::get(lists.find("list", "users").unwrap(), "items"),
        "3"
    );

    let cfg = show(&a, "SHOW CONFIG").await;
    assert_eq!(cfg.columns, vec!["key", "value", "default", "changeable"]);
    let k = cfg.find("key", "default_pool_size").unwrap();
    assert_eq!(Rows::get(k, "value"), "5");
    assert_eq!(Rows::get(k, "default"), "20");
    assert_eq!(Rows::get(k, "changeable"), "yes");
    assert_eq!(
        Rows::get(cfg.find("key", "listen_addr").unwrap(), "changeable"),
        "no"
    );

    let v = show(&a, "SHOW VERSION").await;
    assert_eq!(v.columns, vec!["version"]);
    assert!(Rows::get(&v.rows[0], "version").starts_with("pgvane "));

    let help = show(&a, "SHOW HELP").await;
    assert!(help.rows.len() > 10);
    assert!(help.find("command", "SHOW POOLS").is_some());
    assert!(help.find("command", "RELOAD").is_some());

    let reps = show(&a, "SHOW REPLICAS").await;
    assert_prefix(
        "SHOW REPLICAS",
        &reps.columns,
        &[
            "database",
            "shard",
            "role",
            "host",
            "port",
            "state",
            "lag_bytes",
            "lag_seconds",
            "reads",
        ],
    );
    // The monitor of "ro" probes the replica within a few intervals.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reps = show(&a, "SHOW REPLICAS").await;
        let rep = reps
            .rows
            .iter()
            .find(|r| Rows::get(r, "database") == "ro" && Rows::get(r, "role") == "replica")
            .expect("replica row of ro")
            .clone();
        assert_eq!(Rows::get(&rep, "port"), replica.port().to_string());
        let state = Rows::get(&rep, "state").to_string();
        if state == "ok" || state == "lagging" {
            break;
        }
        assert!(Instant::now() < deadline, "replica state {state}: {rep:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app_primary = show(&a, "SHOW REPLICAS").await;
    let row = app_primary
        .rows
        .iter()
        .find(|r| Rows::get(r, "database") == "app" && Rows::get(r, "role") == "primary")
        .unwrap()
        .clone();
    assert_eq!(Rows::get(&row, "state"), "ok");

    let shards = show(&a, "SHOW SHARDS").await;
    assert_prefix(
        "SHOW SHARDS",
        &shards.columns,
        &[
            "database", "shard", "primary", "replicas", "queries", "errors",
        ],
    );
    let sh = shards.find("database", "app").unwrap();
    assert_eq!(Rows::get(sh, "primary"), format!("127.0.0.1:{}", pg.port()));
    assert!(Rows::get(sh, "queries").parse::<u64>().unwrap() >= 5);
    let sh = shards.find("database", "ro").unwrap();
    assert_eq!(
        Rows::get(sh, "replicas"),
        format!("127.0.0.1:{}", replica.port())
    );

    // psql, the operators' client: headers, lower case, trailing semicolon.
    let out = psql_cmd(p.port(), "admin", "pgvane", Some(ADMIN_PASSWORD))
        .args(["-P", "tuples_only=off", "-F", "|", "-c", "show pools;"])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or("");
    assert!(
        header.starts_with(&POOLS.join("|")),
        "psql header: {header}"
    );
    assert!(text.lines().any(|l| l.starts_with("app|app|")), "{text}");
    for cmd in [
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW DATABASES",
        "SHOW STATS",
        "SHOW LISTS",
        "SHOW CONFIG",
        "SHOW USERS",
        "SHOW REPLICAS",
        "SHOW SHARDS",
        "SHOW HELP",
        "SHOW VERSION",
        "SHOW STATS_TOTALS",
        "SHOW STATS_AVERAGES",
    ] {
        let out = psql_cmd(p.port(), "admin", "pgvane", Some(ADMIN_PASSWORD))
            .args(["-c", cmd])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_errors() {
    let p = start("");
    // Not an admin or stats user: 28000 at login.
    let e = match try_connect(&url(&p, "app", APP_PASSWORD, "pgvane")).await {
        Ok(_) => panic!("app may not use the console"),
        Err(e) => e,
    };
    assert_eq!(code(&e), "28000");

    // Stats users may SHOW, nothing else.
    let s = connect(&url(&p, "stats", STATS_PASSWORD, "pgvane")).await;
    show(&s, "SHOW POOLS").await;
    for cmd in [
        "RELOAD",
        "PAUSE",
        "SET default_pool_size = 3",
        "SHUTDOWN",
        "KILL app",
    ] {
        let e = s.simple_query(cmd).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{cmd}");
        assert!(message(&e).contains("SHOW"), "{}", message(&e));
    }

    let a = admin(&p).await;
    // Unknown commands point to SHOW HELP.
    let e = a.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), "42601");
    assert!(message(&e).contains("SHOW HELP"), "{}", message(&e));
    let e = a.simple_query("SHOW NOTHING").await.unwrap_err();
    assert_eq!(code(&e), "42601");
    let e = a.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(code(&e), "3D000");
    // The extended protocol is refused with 0A000; the session stays usable.
    let e = a.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert!(
        message(&e).contains("simple query protocol"),
        "{}",
        message(&e)
    );
    let v = show(&a, "SHOW VERSION").await;
    assert_eq!(v.rows.len(), 1);
    // Several statements in one query, and an empty one.
    let msgs = a.simple_query("SHOW VERSION; SHOW LISTS;").await.unwrap();
    let rows = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert!(rows > 1);
    a.simple_query(";").await.unwrap();
}

/// Log in over a raw socket (trust auth) and return the stream after ReadyForQuery.
fn raw_login(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for kv in ["user", "admin", "database", "pgvane"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed during login: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 6 && buf[buf.len() - 6] == b'Z' {
            return s;
        }
    }
}

/// Read until the server closes; return (tag, SQLSTATE) of every ErrorResponse.
fn read_errors(mut s: TcpStream) -> Vec<(String, String)> {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= buf.len() {
        let tag = buf[i];
        let len = i32::from_be_bytes([buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]]) as usize;
        let body = &buf[i + 5..(i + 1 + len).min(buf.len())];
        if tag == b'E' {
            let mut sev = String::new();
            let mut code = String::new();
            for field in body.split(|b| *b == 0) {
                if let Some((&t, v)) = field.split_first() {
                    match t {
                        b'S' => sev = String::from_utf8_lossy(v).into(),
                        b'C' => code = String::from_utf8_lossy(v).into(),
                        _ => {}
                    }
                }
            }
            out.push((sev, code));
        }
        i += 1 + len;
    }
    out
}

#[test]
fn garbage_gets_fatal_08p01() {
    let pg = shared();
    let p = Pgvane::start_fn(|port| config(port, pg.port(), "auth_type = \"trust\"", ""));
    // An unknown message type.
    let mut s = raw_login(p.port());
    s.write_all(&[b'!', 0, 0, 0, 4]).unwrap();
    assert_eq!(read_errors(s), vec![("FATAL".into(), "08P01".into())]);
    // A bad length.
    let mut s = raw_login(p.port());
    s.write_all(&[b'Q', 0, 0, 0, 1]).unwrap();
    assert_eq!(read_errors(s), vec![("FATAL".into(), "08P01".into())]);
    // Extended protocol: an error, then ReadyForQuery after Sync; Terminate closes.
    let mut s = raw_login(p.port());
    let mut msgs = Vec::new();
    msgs.extend_from_slice(&[b'P', 0, 0, 0, 8, 0, b'x', 0, 0]); // Parse "" "x" (truncated types)
    msgs.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    msgs.extend_from_slice(&[b'X', 0, 0, 0, 4]);
    s.write_all(&msgs).unwrap();
    assert_eq!(read_errors(s), vec![("ERROR".into(), "0A000".into())]);
}

/// Runs `simple_query(sql)` in a task, reporting when it finished.
fn spawn_query(c: Arc<Client>, sql: &'static str) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        c.simple_query(sql)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_queries_until_resume() {
    let p = start("");
    let a = Arc::new(admin(&p).await);
    let c1 = Arc::new(app_client(&p, "app").await);
    let c2 = Arc::new(app_client(&p, "app").await);
    c1.simple_query("SELECT 1").await.unwrap();

    // PAUSE waits for servers in use to be released: c2 is inside a transaction.
    c2.simple_query("BEGIN; SELECT 1").await.unwrap();
    let pause = {
        let a = a.clone();
        tokio::spawn(async move { a.simple_query("PAUSE app").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction held a server"
    );
    c2.simple_query("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once the server is released")
        .unwrap()
        .unwrap();

    let dbs = show(&a, "SHOW DATABASES").await;
    assert_eq!(Rows::get(dbs.find("name", "app").unwrap(), "paused"), "1");
    assert_eq!(Rows::get(dbs.find("name", "other").unwrap(), "paused"), "0");

    // A query started during PAUSE completes only after RESUME.
    let q = spawn_query(c1.clone(), "SELECT 1");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!q.is_finished(), "query ran during PAUSE");
    let clients = show(&a, "SHOW CLIENTS").await;
    assert!(
        clients
            .rows
            .iter()
            .any(|r| Rows::get(r, "state") == "waiting"),
        "a waiting client is listed"
    );
    // Other databases are not paused.
    let o = app_client(&p, "other").await;
    tokio::time::timeout(Duration::from_secs(5), o.simple_query("SELECT 1"))
        .await
        .expect("other database runs during PAUSE app")
        .unwrap();
    a.simple_query("RESUME app").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), q)
        .await
        .expect("query completes after RESUME")
        .unwrap()
        .unwrap();

    // PAUSE without a database pauses all of them; RESUME without one resumes all.
    a.simple_query("PAUSE").await.unwrap();
    let q = spawn_query(c1.clone(), "SELECT 2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!q.is_finished());
    a.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), q)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_kill_reconnect() {
    let p = start("default_pool_size = 1");
    let a = admin(&p).await;

    a.simple_query("DISABLE app").await.unwrap();
    let e = match try_connect(&url(&p, "app", APP_PASSWORD, "app")).await {
        Ok(_) => panic!("disabled database refuses logins"),
        Err(e) => e,
    };
    assert_eq!(code(&e), "57P03");
    let dbs = show(&a, "SHOW DATABASES").await;
    assert_eq!(Rows::get(dbs.find("name", "app").unwrap(), "disabled"), "1");
    a.simple_query("ENABLE app").await.unwrap();

    // RECONNECT: the next transaction gets a new server connection.
    let c = app_client(&p, "app").await;
    let pid = |rows: Vec<SimpleQueryMessage>| -> String {
        rows.into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    };
    let p1 = pid(c.simple_query("SELECT pg_backend_pid()").await.unwrap());
    let p2 = pid(c.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_eq!(p1, p2, "pool of 1 reuses its server");
    a.simple_query("RECONNECT app").await.unwrap();
    let p3 = pid(c.simple_query("SELECT pg_backend_pid()").await.unwrap());
    assert_ne!(p1, p3, "RECONNECT replaced the server");

    // KILL_CLIENT and KILL db disconnect clients; others keep working.
    let o = app_client(&p, "other").await;
    let clients = show(&a, "SHOW CLIENTS").await;
    let id = Rows::get(
        clients.find("database", "app").expect("client of app"),
        "id",
    )
    .to_string();
    let e = a.simple_query("KILL_CLIENT 999999").await.unwrap_err();
    assert_eq!(code(&e), "42704");
    a.simple_query(&format!("KILL_CLIENT {id}")).await.unwrap();
    let closed = async {
        while !c.is_closed() && c.simple_query("SELECT 1").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("killed client disconnected");
    let c2 = app_client(&p, "app").await;
    c2.simple_query("SELECT 1").await.unwrap();
    a.simple_query("KILL app").await.unwrap();
    let closed = async {
        while !c2.is_closed() && c2.simple_query("SELECT 1").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("KILL app disconnected its clients");
    o.simple_query("SELECT 1")
        .await
        .expect("other database untouched");
    // New logins still work after KILL.
    app_client(&p, "app")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_running_settings() {
    let p = start("");
    let a = admin(&p).await;
    let c = app_client(&p, "app").await;
    c.simple_query("SELECT 1").await.unwrap();

    a.simple_query("SET default_pool_size = 3").await.unwrap();
    a.simple_query("set query_wait_timeout to '30s'")
        .await
        .unwrap();
    let cfg = show(&a, "SHOW CONFIG").await;
    assert_eq!(
        Rows::get(cfg.find("key", "default_pool_size").unwrap(), "value"),
        "3"
    );
    assert_eq!(
        Rows::get(cfg.find("key", "query_wait_timeout").unwrap(), "value"),
        "30s"
    );
    let pools = show(&a, "SHOW POOLS").await;
    let row = pools.find("database", "app").unwrap();
    assert_eq!(Rows::get(row, "pool_size"), "3");

    // Rejected values name the problem; the running configuration stays.
    let e = a.simple_query("SET min_pool_size = 50").await.unwrap_err();
    assert_eq!(code(&e), "22023");
    assert!(message(&e).contains("min_pool_size"), "{}", message(&e));
    let e = a
        .simple_query("SET default_pool_size = lots")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");
    let e = a
        .simple_query("SET listen_addr = '127.0.0.1:1'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "55P02");
    let e = a.simple_query("SET no_such_key = 1").await.unwrap_err();
    assert_eq!(code(&e), "42704");
    let cfg = show(&a, "SHOW CONFIG").await;
    assert_eq!(
        Rows::get(cfg.find("key", "min_pool_size").unwrap(), "value"),
        "0"
    );
    c.simple_query("SELECT 1").await.unwrap();
}

/// The test's config file with `default_pool_size` and, optionally, a database `app2`.
fn reload_config(listen: u16, pg_port: u16, pool: usize, with_app2: bool) -> String {
    let extra = if with_app2 {
        format!(
            r#"
[[databases]]
name = "app2"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}
"#
        )
    } else {
        String::new()
    };
    config(
        listen,
        pg_port,
        &format!("default_pool_size = {pool}"),
        &extra,
    )
}

/// 50 clients running queries until `stop`; returns (queries, errors).
fn load(p: &Pgvane, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<(u64, Vec<String>)>> {
    (0..50)
        .map(|_| {
            let u = url(p, "app", APP_PASSWORD, "app");
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = match try_connect(&u).await {
                    Ok(c) => c,
                    Err(e) => return (0, vec![format!("connect: {e}")]),
                };
                let mut n = 0;
                let mut errs = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match c.simple_query("SELECT 1").await {
                        Ok(_) => n += 1,
                        Err(e) => errs.push(format!("{e}: {}", message(&e))),
                    }
                }
                (n, errs)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_and_bad_reload() {
    let pg = shared();
    let p = Pgvane::start_fn(|l| reload_config(l, pg.port(), 5, false));
    let port = p.port();
    let a = admin(&p).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&p, stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;

    std::fs::write(p.config_path(), reload_config(port, pg.port(), 8, true)).unwrap();
    a.simple_query("RELOAD").await.unwrap();
    let c2 = app_client(&p, "app2").await;
    c2.simple_query("SELECT 1")
        .await
        .expect("database added by RELOAD serves");
    let pools = show(&a, "SHOW POOLS").await;
    assert_eq!(
        Rows::get(pools.find("database", "app").unwrap(), "pool_size"),
        "8"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An invalid file is rejected whole, with the reason; the old configuration serves.
    std::fs::write(
        p.config_path(),
        reload_config(port, pg.port(), 8, true)
            .replace("default_pool_size = 8", "default_pool_size = 0"),
    )
    .unwrap();
    let e = a.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(code(&e), "F0000");
    assert!(message(&e).contains("default_pool_size"), "{}", message(&e));
    std::fs::write(p.config_path(), "this is [not toml").unwrap();
    let e = a.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(code(&e), "F0000");
    let cfg = show(&a, "SHOW CONFIG").await;
    assert_eq!(
        Rows::get(cfg.find("key", "default_pool_size").unwrap(), "value"),
        "8"
    );
    c2.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Relaxed);
    let total = AtomicU64::new(0);
    for t in tasks {
        let (n, errs) = t.await.unwrap();
        assert!(errs.is_empty(), "client errors during reload: {errs:?}");
        total.fetch_add(n, Ordering::Relaxed);
    }
    assert!(total.load(Ordering::Relaxed) > 50, "load ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_exits_zero() {
    let mut p = start("");
    let c = app_client(&p, "app").await;
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);
    let a = admin(&p).await;
    let r = a.simple_query("SHUTDOWN").await;
    assert!(r.is_ok(), "{r:?}");
    let st = tokio::task::spawn_blocking(move || {
        let st = p.wait_exit(Duration::from_secs(15));
        (st, p)
    })
    .await
    .unwrap();
    let (status, p) = st;
    let status = status.unwrap_or_else(|| panic!("pgvane did not exit\n{}", p.log()));
    assert!(status.success(), "exit status {status}\n{}", p.log());
}
