//! Client-side helpers: tokio-postgres connections and psql commands.

use std::process::Command;

use super::util;

/// Connects with tokio-postgres (no TLS) and spawns the connection task on the
/// current tokio runtime. Panics with the connection string and error on failure.
pub async fn connect(connstr: &str) -> tokio_postgres::Client {
    try_connect(connstr)
        .await
        .unwrap_or_else(|e| panic!("connect({connstr:?}) failed: {e} ({e:?})"))
}

/// Like [`connect`] but returns the error (e.g. to assert an auth failure).
pub async fn try_connect(connstr: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(connstr, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Errors here are expected in tests that kill servers/proxies; the
        // client sees them as failed queries.
        let _ = conn.await;
    });
    Ok(client)
}

/// A `psql` command against 127.0.0.1:`port` as `user` on `db` with `-X -At -w`
/// (no psqlrc, unaligned tuples-only, never prompt) and `PGPASSWORD` set when
/// `password` is given. Add e.g. `.args(["-c", "SELECT 1"])` and run it.
pub fn psql_cmd(port: u16, user: &str, db: &str, password: Option<&str>) -> Command {
    let mut cmd = Command::new(util::bin("psql"));
    util::scrub_pg_env(&mut cmd);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-d",
        db,
        "-X",
        "-At",
        "-w",
    ])
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGSSLMODE", "disable");
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd
}
