//! Real drivers with their real habits, through pgvane and directly: the same script must
//! pass both ways. `.ci/run` installs the drivers (psycopg 3 and asyncpg from PyPI).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Run a driver script with a DSN; Err(output) when it fails or does not finish in time.
fn run_script(interpreter: &str, script: &str, dsn: &str) -> Result<String, String> {
    let path = format!("{}/tests/drivers/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(interpreter)
        .arg(&path)
        .arg(dsn)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {interpreter} {path}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                return Err(format!(
                    "{script} hung (killed after 60 s):\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn pgvane_for(pg: &PgServer, replica: Option<&PgServer>) -> Pgvane {
    let replicas = replica
        .map(|r| {
            format!(
                "  [databases.routing]\n  read_write_split = true\n  [[databases.shards]]\n  primary = {{ host = \"127.0.0.1\", port = {}, dbname = \"app\" }}\n  replicas = [{{ host = \"127.0.0.1\", port = {}, dbname = \"app\" }}]\n",
                pg.port(),
                r.port()
            )
        })
        .unwrap_or_else(|| {
            format!(
                "  [[databases.shards]]\n  primary = {{ host = \"127.0.0.1\", port = {}, dbname = \"app\" }}\n",
                pg.port()
            )
        });
    Pgvane::start_fn(|port| {
        format!(
            r#"
[general]
listen_addr = "127.0.0.1:{port}"
default_pool_size = 2

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
{replicas}"#
        )
    })
}

fn dsn(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app connect_timeout=10")
}

#[test]
fn psycopg_pipeline_through_transaction_pooling() {
    let pg = shared();
    run_script("python3", "psycopg_pipeline.py", &dsn(pg.port()))
        .unwrap_or_else(|e| panic!("the script fails against PostgreSQL itself: {e}"));
    let p = pgvane_for(pg, None);
    if let Err(e) = run_script("python3", "psycopg_pipeline.py", &dsn(p.port())) {
        panic!("through pgvane: {e}\n--- pgvane log ---\n{}", p.log());
    }
}

#[test]
fn psycopg_pipeline_with_read_write_split() {
    let pg = shared();
    let replica = shared_replica();
    let p = pgvane_for(pg, Some(replica));
    if let Err(e) = run_script("python3", "psycopg_pipeline.py", &dsn(p.port())) {
        panic!("through pgvane: {e}\n--- pgvane log ---\n{}", p.log());
    }
}

#[test]
fn asyncpg_statement_cache_across_alter_table() {
    let pg = shared();
    run_script("python3", "asyncpg_alter.py", &dsn(pg.port()))
        .unwrap_or_else(|e| panic!("the script fails against PostgreSQL itself: {e}"));
    let p = pgvane_for(pg, None);
    if let Err(e) = run_script("python3", "asyncpg_alter.py", &dsn(p.port())) {
        panic!("through pgvane: {e}\n--- pgvane log ---\n{}", p.log());
    }
}
