//! Smoke tests of the integration-test harness itself (tests/common). They use
//! real PostgreSQL servers but not the pgvane binary.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn shared_server_answers_psql() {
    let pg = shared();
    assert_eq!(pg.psql("postgres", "SELECT 1"), "1");
    assert_eq!(pg.psql("app", "SELECT current_database()"), "app");
    assert_eq!(pg.psql("postgres", "SHOW max_connections"), "300");
    assert_eq!(pg.psql("postgres", "SHOW listen_addresses"), "127.0.0.1");
    assert_eq!(pg.psql("postgres", "SHOW fsync"), "off");
    assert_eq!(pg.psql("postgres", "SHOW wal_level"), "replica");
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(PgServer::bin("psql").is_file());
    assert!(PgServer::bin("pgbench").is_file());
}

#[tokio::test]
async fn auth_methods_work_with_tokio_postgres() {
    let pg = shared();
    for user in ["app", "md5user", "passuser", "trustuser", "postgres"] {
        let c = connect(&pg.connstr(user, "app")).await;
        let row = c.query_one("SELECT current_user::text", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), user);
    }
    // Passwords are stored the way the pg_hba methods expect.
    assert!(pg
        .psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'"
        )
        .starts_with("md5"));
    assert!(pg
        .psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'"
        )
        .starts_with("SCRAM-SHA-256$"));
    // Wrong passwords are rejected (so auth really is enforced).
    for user in ["app", "md5user", "passuser"] {
        let bad = format!(
            "host=127.0.0.1 port={} user={user} dbname=app password=wrong",
            pg.port()
        );
        let err = try_connect(&bad)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} connected with a wrong password"));
        assert!(
            err.to_string().contains("password") || format!("{err:?}").contains("28P01"),
            "{err:?}"
        );
    }
    // Non-superusers can create tables in app's public schema.
    let c = connect(&pg.connstr("md5user", "app")).await;
    c.batch_execute(
        "CREATE TEMP TABLE t (x int); CREATE TABLE md5user_t (x int); DROP TABLE md5user_t",
    )
    .await
    .unwrap();
}

#[test]
fn psql_cmd_uses_password() {
    let pg = shared();
    let out = psql_cmd(pg.port(), "app", "app", Some(APP_PASSWORD))
        .args(["-c", "SELECT current_user"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
    let out = psql_cmd(pg.port(), "app", "app", Some("nope"))
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

#[test]
fn replica_streams_pauses_and_resumes() {
    let primary = shared();
    let replica = primary.start_replica();
    assert_ne!(replica.port(), primary.port());
    assert_eq!(replica.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(primary.psql("postgres", "SELECT pg_is_in_recovery()"), "f");

    primary.psql("app", "CREATE TABLE repl_smoke (id int primary key)");
    primary.psql("app", "INSERT INTO repl_smoke VALUES (1)");
    replica.wait_replay_caught_up(primary);
    assert_eq!(replica.psql("app", "SELECT count(*) FROM repl_smoke"), "1");

    replica.pause_replay();
    primary.psql(
        "app",
        "INSERT INTO repl_smoke SELECT g FROM generate_series(2, 1000) g",
    );
    replica.wait_received(primary);
    assert!(
        replica.replay_lag_bytes() > 0,
        "lag should grow while replay is paused"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(replica.psql("app", "SELECT count(*) FROM repl_smoke"), "1");

    replica.resume_replay();
    replica.wait_replay_caught_up(primary);
    assert_eq!(
        replica.psql("app", "SELECT count(*) FROM repl_smoke"),
        "1000"
    );
    assert_eq!(replica.replay_lag_bytes(), 0);

    // Writes on the replica fail.
    assert!(replica
        .try_psql("app", "INSERT INTO repl_smoke VALUES (5000)")
        .is_err());
}

#[tokio::test]
async fn own_server_options_restart_and_crash() {
    let mut pg = PgServer::start_with(
        PgOptions::default()
            .max_connections(50)
            .preload("pg_stat_statements"),
    );
    assert_eq!(pg.psql("postgres", "SHOW max_connections"), "50");
    assert_eq!(
        pg.psql("postgres", "SHOW shared_preload_libraries"),
        "pg_stat_statements"
    );
    pg.psql("app", "CREATE EXTENSION pg_stat_statements");
    let port = pg.port();

    // A client connection is cut by a crash and works again after restart.
    let c = connect(&pg.connstr("app", "app")).await;
    c.batch_execute("CREATE TABLE k (x int); INSERT INTO k VALUES (1); CHECKPOINT")
        .await
        .unwrap();
    pg.kill_immediate();
    pg.kill_immediate(); // idempotent
    assert!(c.simple_query("SELECT 1").await.is_err());
    assert!(try_connect(&pg.connstr("app", "app")).await.is_err());
    pg.restart();
    assert_eq!(pg.port(), port);
    let c = connect(&pg.connstr("app", "app")).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM k", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    pg.stop();
    pg.stop(); // idempotent
    pg.restart();
    assert_eq!(pg.psql("app", "SELECT count(*) FROM k"), "1");
}

#[test]
fn drop_stops_server_and_removes_dir() {
    let pg = PgServer::start_with(PgOptions::default().create_roles(false));
    let data = pg.data_dir().to_path_buf();
    let root = data.parent().unwrap().to_path_buf();
    let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(pg);
    assert!(!root.exists(), "{} still exists", root.display());
    let gone = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "postmaster {pid} still alive after drop");
}

#[test]
fn listen_port_is_found_in_configs() {
    assert_eq!(
        guess_listen_port("listen = \"127.0.0.1:6432\"\n"),
        Some(6432)
    );
    assert_eq!(
        guess_listen_port("[server]\nlisten_addr = \"127.0.0.1\"\nlisten_port = 7000\n"),
        Some(7000)
    );
    assert_eq!(
        guess_listen_port("[proxy]\nlisten = [\"127.0.0.1:7001\"]\n"),
        Some(7001)
    );
    assert_eq!(
        guess_listen_port("[[backends]]\nport = 5432\n[pgvane]\nport = 7002\n"),
        Some(7002)
    );
    assert_eq!(
        guess_listen_port("[[backends]]\nhost = \"x\"\nport = 5432\n"),
        None
    );
    assert_eq!(guess_listen_port("[general]\nlisten_addr = \"127.0.0.1:7003\"\n[[databases.shards]]\nprimary = { host = \"127.0.0.1\", port = 5432 }\n"), Some(7003));
    // Another process may grab a port between free_port() and bind(); that is a race the
    // callers retry (Pgvane::start_fn), so require only that free ports are usually bindable.
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let bindable = ports
        .iter()
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", **p)).is_ok())
        .count();
    assert!(
        bindable >= 4,
        "ports {ports:?} from free_port(): only {bindable} bindable"
    );
    let distinct: std::collections::HashSet<_> = ports.iter().collect();
    assert_eq!(
        distinct.len(),
        ports.len(),
        "free_port() handed out the same port twice"
    );
}

/// A test process that dies without running destructors (SIGKILL, or statics
/// such as `shared()` at normal exit) must not leave servers or dirs behind.
#[test]
fn watchdog_cleans_up_after_killed_test_process() {
    use std::io::BufRead;
    const NAME: &str = "watchdog_cleans_up_after_killed_test_process";
    if std::env::var_os("PGVANE_HARNESS_WATCHDOG_CHILD").is_some() {
        let pg = shared();
        let replica = Box::leak(Box::new(pg.start_replica()));
        for s in [pg, &*replica] {
            let pid = std::fs::read_to_string(s.data_dir().join("postmaster.pid")).unwrap();
            println!(
                "\nSERVER {} {}",
                pid.lines().next().unwrap(),
                s.data_dir().parent().unwrap().display()
            );
        }
        println!("\nREADY");
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("PGVANE_HARNESS_WATCHDOG_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut servers = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("child test process ended before READY");
        }
        if let Some(rest) = line.trim().strip_prefix("SERVER ") {
            let (pid, dir) = rest.split_once(' ').unwrap();
            servers.push((pid.to_string(), std::path::PathBuf::from(dir)));
        }
        if line.trim() == "READY" {
            break;
        }
    }
    assert_eq!(servers.len(), 2);
    for (pid, dir) in &servers {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists() && dir.exists());
    }
    child.kill().unwrap(); // SIGKILL: no destructors, no atexit
    child.wait().unwrap();
    for (pid, dir) in &servers {
        let done = poll(Duration::from_secs(20), Duration::from_millis(100), || {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|s| !s.contains("zombie"))
                .unwrap_or(false);
            (!alive && !dir.exists()).then_some(())
        });
        assert!(
            done.is_some(),
            "postmaster {pid} / dir {} survived the killed test process",
            dir.display()
        );
    }
}
