//! Transparent sessions in transaction pooling: no client ever sees another client's session
//! state, and each client keeps exactly its own, with PostgreSQL's semantics. Pool of one
//! server connection unless said, so that clients surely share it; every check compares with
//! what a fresh direct connection to PostgreSQL sees.

mod common;

use common::*;

fn config(listen: u16, pg_port: u16, pool: usize, extra: &str) -> String {
    let mode = if extra.contains("pool_mode") {
        ""
    } else {
        "pool_mode = \"transaction\""
    };
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
{mode}
default_pool_size = {pool}
query_wait_timeout = "5s"
{extra}

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}
"#
    )
}

fn start(pool: usize, extra: &str) -> Pgvane {
    let pg = shared();
    Pgvane::start(&config(free_port(), pg.port(), pool, extra))
}

async fn through(p: &Pgvane) -> tokio_postgres::Client {
    through_with(p, "").await
}

async fn through_with(p: &Pgvane, opts: &str) -> tokio_postgres::Client {
    connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=app {opts}",
        p.port()
    ))
    .await
}

async fn direct() -> tokio_postgres::Client {
    connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=app",
        shared().port()
    ))
    .await
}

/// One row of text columns.
async fn row(c: &tokio_postgres::Client, sql: &str) -> Vec<Option<String>> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    for m in msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return (0..r.len()).map(|i| r.get(i).map(str::to_string)).collect();
        }
    }
    panic!("{sql}: no row")
}

const LOOK: &str = "SELECT current_user, session_user, current_setting('work_mem'), \
     current_setting('lo_compat_privileges'), current_setting('search_path'), \
     current_setting('default_transaction_read_only'), current_setting('DateStyle'), \
     current_setting('app.tenant', true), current_setting('statement_timeout')";

/// What a fresh direct connection sees.
async fn fresh() -> Vec<Option<String>> {
    row(&direct().await, LOOK).await
}

fn ensure_role(name: &str) {
    shared().psql(
        "postgres",
        &format!(
            "DO $$ BEGIN CREATE ROLE {name}; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ),
    );
}

#[tokio::test]
async fn identity_and_settings_never_reach_the_next_client() {
    ensure_role("sess_u2");
    let p = start(1, "");
    let a = through(&p).await;
    a.batch_execute("SET work_mem = '77kB'").await.unwrap();
    a.batch_execute("SET lo_compat_privileges = on")
        .await
        .unwrap();
    a.batch_execute("SET SESSION AUTHORIZATION sess_u2")
        .await
        .unwrap();
    let b = through(&p).await;
    assert_eq!(row(&b, LOOK).await, fresh().await, "B sees a fresh session");
    let mine = row(&a, LOOK).await;
    assert_eq!(mine[0].as_deref(), Some("sess_u2"));
    assert_eq!(mine[1].as_deref(), Some("sess_u2"));
    assert_eq!(mine[2].as_deref(), Some("77kB"));
    assert_eq!(mine[3].as_deref(), Some("on"));
    // And back: B still fresh after A ran again.
    assert_eq!(row(&b, LOOK).await, fresh().await);
}

#[tokio::test]
async fn a_dropped_identity_is_never_replaced_by_the_login_user() {
    ensure_role("sess_u3");
    let p = start(1, "");
    let a = through(&p).await;
    a.batch_execute("SET SESSION AUTHORIZATION sess_u3")
        .await
        .unwrap();
    let b = through(&p).await;
    row(&b, "SELECT 1").await; // the server now has B's state
    shared().psql("postgres", "DROP ROLE sess_u3");
    match a.simple_query("SELECT current_user").await {
        Ok(m) => {
            let who = m.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
            assert_eq!(
                who.as_deref(),
                Some("sess_u3"),
                "A must never run as anyone else"
            );
        }
        Err(e) => {
            let code = e.code().map(|c| c.code().to_string());
            assert!(code.is_some(), "a clear SQL error, got {e}");
        }
    }
    assert_eq!(row(&b, LOOK).await, fresh().await);
}

#[tokio::test]
async fn settings_rolled_back_with_their_transaction_are_not_kept() {
    ensure_role("sess_r1");
    let p = start(1, "");
    let a = through(&p).await;
    let b = through(&p).await;
    let before = row(&a, LOOK).await;
    a.batch_execute("BEGIN; SET work_mem = '1MB'; SET ROLE sess_r1; ROLLBACK")
        .await
        .unwrap();
    row(&b, "SELECT 1").await;
    assert_eq!(row(&a, LOOK).await, before, "ROLLBACK undid the SETs");
    // ROLLBACK TO SAVEPOINT too.
    a.batch_execute(
        "BEGIN; SET statement_timeout = '7s'; SAVEPOINT s; SET statement_timeout = '9s'; ROLLBACK TO SAVEPOINT s; COMMIT",
    )
    .await
    .unwrap();
    row(&b, "SELECT 1").await;
    assert_eq!(row(&a, LOOK).await[8].as_deref(), Some("7s"));
    assert_eq!(row(&b, LOOK).await, fresh().await);
}

#[tokio::test]
async fn state_changed_in_ways_sql_text_does_not_show_is_read_from_the_server() {
    let p = start(1, "");
    let a = through(&p).await;
    let b = through(&p).await;
    // A custom setting, once defined on a backend, cannot be removed from it: a later client
    // of that backend reads '' where a fresh connection reads NULL (PostgreSQL itself gives
    // '' after SET then RESET). Never the other client's value.
    let without_custom = |mut v: Vec<Option<String>>| {
        let custom = v.remove(7);
        assert!(matches!(custom.as_deref(), None | Some("")), "{custom:?}");
        v
    };
    for sql in [
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET search_path = pg_catalog, public; SELECT 1",
        "SELECT set_config('work_mem', '3MB', false)",
        "WITH s AS (SELECT set_config('app.tenant', 'acme', false)) SELECT * FROM s",
        "DO $$ BEGIN PERFORM set_config('statement_timeout', '11s', false); END $$",
    ] {
        a.batch_execute(sql).await.unwrap();
        assert_eq!(
            without_custom(row(&b, LOOK).await),
            without_custom(fresh().await),
            "after A ran {sql}"
        );
        // B can write: A's read-only default did not reach it.
        b.batch_execute("CREATE TABLE IF NOT EXISTS sess_rw (a int); DROP TABLE sess_rw")
            .await
            .unwrap();
    }
    let mine = row(&a, LOOK).await;
    assert_eq!(mine[2].as_deref(), Some("3MB"));
    assert_eq!(mine[4].as_deref(), Some("pg_catalog, public"));
    assert_eq!(mine[5].as_deref(), Some("on"));
    assert_eq!(mine[7].as_deref(), Some("acme"));
    assert_eq!(mine[8].as_deref(), Some("11s"));
    // Custom settings via SET too.
    a.batch_execute("SET app.tenant = 'globex'").await.unwrap();
    row(&b, "SELECT 1").await;
    assert_eq!(row(&a, LOOK).await[7].as_deref(), Some("globex"));
    without_custom(row(&b, LOOK).await);
}

#[tokio::test]
async fn a_partial_datestyle_follows_as_its_resulting_value() {
    let p = start(1, "");
    let a = through_with(&p, "options='-c DateStyle=Postgres,MDY'").await;
    let b = through(&p).await;
    a.batch_execute("SET datestyle TO iso; SET datestyle TO ymd")
        .await
        .unwrap();
    row(&b, "SELECT 1").await;
    assert_eq!(
        row(&a, "SELECT date '1999-01-08'::text").await[0].as_deref(),
        Some("1999-01-08")
    );
}

#[tokio::test]
async fn reset_returns_to_the_clients_startup_value() {
    let p = start(1, "");
    let a = through_with(&p, "options='-c TimeZone=America/Los_Angeles'").await;
    let b = through(&p).await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    row(&b, "SELECT 1").await;
    a.batch_execute("RESET ALL").await.unwrap();
    row(&b, "SELECT 1").await;
    assert_eq!(
        row(&a, "SHOW TimeZone").await[0].as_deref(),
        Some("America/Los_Angeles")
    );
    assert_eq!(
        row(&b, "SHOW TimeZone").await,
        row(&direct().await, "SHOW TimeZone").await
    );
}

#[tokio::test]
async fn reset_returns_to_the_startup_value_at_once_in_session_mode_too() {
    for mode in ["session", "transaction"] {
        let p = start(1, &format!("pool_mode = \"{mode}\""));
        let a = through_with(
            &p,
            "options='-c TimeZone=America/Los_Angeles -c DateStyle=SQL,DMY'",
        )
        .await;
        a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'ISO'")
            .await
            .unwrap();
        a.batch_execute("RESET ALL").await.unwrap();
        assert_eq!(
            row(
                &a,
                "SELECT current_setting('TimeZone'), current_setting('DateStyle')"
            )
            .await,
            [Some("America/Los_Angeles".into()), Some("SQL, DMY".into())],
            "{mode} mode, after RESET ALL"
        );
        a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
            .await
            .unwrap();
        a.batch_execute("RESET TimeZone").await.unwrap();
        assert_eq!(
            row(&a, "SHOW TimeZone").await[0].as_deref(),
            Some("America/Los_Angeles"),
            "{mode} mode, after RESET TimeZone"
        );
    }
}

#[tokio::test]
async fn startup_settings_the_server_rejects_end_the_login_like_postgres() {
    let p = start(1, "");
    for (opts, code) in [
        ("-c no_such_setting=1", "42704"),
        ("-c lock_timeout=", "22023"),
        ("-c work_mem=lots", "22023"),
    ] {
        let connstr = |port: u16| {
            format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app options='{opts}'")
        };
        let want = try_connect(&connstr(shared().port()))
            .await
            .err()
            .and_then(|e| e.code().map(|c| c.code().to_string()));
        assert_eq!(want.as_deref(), Some(code), "PostgreSQL refuses {opts}");
        let got = try_connect(&connstr(p.port()))
            .await
            .err()
            .and_then(|e| e.code().map(|c| c.code().to_string()));
        assert_eq!(
            got.as_deref(),
            Some(code),
            "pgvane refuses {opts} the same way"
        );
    }
    // The previous client's settings never become a refused client's.
    let ok = through_with(&p, "options='-c work_mem=5MB'").await;
    assert_eq!(row(&ok, "SHOW work_mem").await[0].as_deref(), Some("5MB"));
}

/// ParameterStatus values of a login, by name.
fn reported(port: u16, params: &[(&str, &str)]) -> Vec<(String, String)> {
    let (_w, msgs) = common::wire::Wire::login_with(port, params);
    assert!(msgs.iter().any(|m| m.tag == b'Z'), "login failed: {msgs:?}");
    msgs.iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m.body.split(|b| *b == 0);
            let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            (k, v)
        })
        .collect()
}

#[tokio::test]
async fn parameter_status_carries_postgres_values_not_what_the_client_typed() {
    let pg = shared();
    let p = Pgvane::start(&format!(
        "{}\n[[users]]\nname = \"trustuser\"\n",
        config(free_port(), pg.port(), 1, "auth_type = \"trust\"")
    ));
    let params = [
        ("user", "trustuser"),
        ("database", "app"),
        ("client_encoding", "utf8"),
        ("DateStyle", "iso, dmy"),
        ("TimeZone", "europe/rome"),
    ];
    let direct = reported(pg.port(), &params);
    let through = reported(p.port(), &params);
    for key in ["client_encoding", "DateStyle", "TimeZone"] {
        let d = direct
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone());
        let t = through
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone());
        assert!(d.is_some(), "PostgreSQL reports {key}");
        assert_eq!(t, d, "{key}");
    }
}

/// SHOW CLIENTS' `pinned` column once it equals `want` (pgvane reads the server's state
/// after answering the client, so the admin console may see it a moment later).
async fn wait_pinned(p: &Pgvane, want: &[&str]) {
    let mut got = Vec::new();
    for _ in 0..40 {
        got = pinned_reasons(p).await;
        if got == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("pinned: {got:?}, expected {want:?}");
}

async fn pinned_reasons(p: &Pgvane) -> Vec<String> {
    let admin = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=pgvane",
        p.port()
    ))
    .await;
    let mut out = Vec::new();
    for m in admin.simple_query("SHOW CLIENTS").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if let Some(Some(v)) = r
                .columns()
                .iter()
                .position(|c| c.name() == "pinned")
                .map(|i| r.get(i))
            {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// The `pgvane_pinned_clients` sample for `reason`, from /metrics.
fn pinned_metric(port: u16, reason: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .filter(|l| l.starts_with("pgvane_pinned_clients{"))
        .find(|l| l.contains(&format!("reason=\"{reason}\"")) && l.contains("database=\"app\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_session_advisory_lock_pins_and_is_released_when_its_client_leaves() {
    let mport = free_port();
    let p = start(
        2,
        &format!("admin_users = [\"app\"]\nmetrics_addr = \"127.0.0.1:{mport}\""),
    );
    let a = through(&p).await;
    row(&a, "SELECT pg_advisory_lock(4242)").await;
    wait_pinned(&p, &["advisory lock"]).await;
    assert_eq!(
        pinned_metric(mport, "advisory lock"),
        Some(1.0),
        "/metrics shows it"
    );
    // Unlock: no longer pinned.
    row(&a, "SELECT pg_advisory_unlock(4242)").await;
    wait_pinned(&p, &[]).await;
    assert_eq!(pinned_metric(mport, "advisory lock"), Some(0.0));
    // Lock again and leave without unlocking: the lock goes with the client.
    row(&a, "SELECT pg_advisory_lock(4242)").await;
    drop(a);
    let b = through(&p).await;
    let mut got = false;
    for _ in 0..50 {
        if row(&b, "SELECT pg_try_advisory_lock(4242)::text").await[0].as_deref() == Some("true") {
            got = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(got, "the departed client's lock was released");
    row(&b, "SELECT pg_advisory_unlock_all()").await;
}

#[tokio::test]
async fn a_temporary_table_pins_its_client_until_dropped() {
    let p = start(2, "admin_users = [\"app\"]");
    let a = through(&p).await;
    let others: Vec<_> = futures_util::future::join_all((0..3).map(|_| through(&p))).await;
    a.batch_execute("CREATE TEMP TABLE sess_tmp (a int); INSERT INTO sess_tmp VALUES (1), (2)")
        .await
        .unwrap();
    wait_pinned(&p, &["temporary object"]).await;
    for round in 0..5 {
        for o in &others {
            row(o, "SELECT 1").await;
        }
        assert_eq!(
            row(&a, "SELECT count(*) FROM sess_tmp").await[0].as_deref(),
            Some("2"),
            "round {round}"
        );
    }
    a.batch_execute("DROP TABLE sess_tmp").await.unwrap();
    wait_pinned(&p, &[]).await;
}

#[tokio::test]
async fn pinning_off_behaves_like_pgbouncer_but_never_leaks_a_lock() {
    let p = start(1, "pin_session_state = false\nadmin_users = [\"app\"]");
    let a = through(&p).await;
    let b = through(&p).await;
    row(&a, "SELECT pg_advisory_lock(4343)").await;
    wait_pinned(&p, &[]).await;
    assert_eq!(
        row(&b, "SELECT pg_try_advisory_lock(4343)::text").await[0].as_deref(),
        Some("true"),
        "the lock was released when A's server was handed on"
    );
    row(&b, "SELECT pg_advisory_unlock_all()").await;
}

#[tokio::test]
async fn a_pinned_client_whose_backend_dies_is_disconnected_like_postgres() {
    let p = start(2, "admin_users = [\"app\"]");
    let a = through(&p).await;
    a.batch_execute("CREATE TEMP TABLE sess_gone (a int)")
        .await
        .unwrap();
    wait_pinned(&p, &["temporary object"]).await;
    let pid = row(&a, "SELECT pg_backend_pid()").await[0]
        .clone()
        .unwrap_or_default();
    let d = direct().await;
    d.simple_query(&format!("SELECT pg_terminate_backend({pid})"))
        .await
        .unwrap();
    // Its temporary table is gone with its backend: the client must learn it as it would
    // directly (FATAL, connection closed), not carry on without it.
    let first = a.simple_query("SELECT count(*) FROM sess_gone").await;
    assert!(first.is_err(), "the statement after the backend died fails");
    let second = a.simple_query("SELECT 1").await;
    assert!(
        second.is_err() && a.is_closed(),
        "and the connection is closed"
    );
}

#[tokio::test]
async fn a_listening_client_gets_every_notification_while_pgvane_reads_its_state() {
    use tokio_postgres::AsyncMessage;
    let p = start(2, "");
    let (a, mut conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app password=app-secret dbname=app",
            p.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = futures_util::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    a.batch_execute("LISTEN sess_chan").await.unwrap();
    let b = through(&p).await;
    let n = 200;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            b.batch_execute(&format!("NOTIFY sess_chan, '{i}'"))
                .await
                .unwrap();
        }
    });
    // Each SET makes pgvane read the setting back on A's server, where notifications land.
    for i in 0..n {
        a.batch_execute(&format!("SET application_name = 'listener{i}'"))
            .await
            .unwrap();
    }
    sender.await.unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(std::time::Duration::from_secs(3), rx.recv()).await {
            Ok(Some(p)) => got.push(p),
            _ => break,
        }
    }
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every notification, in order");
}

/// What a server sends before closing when a client opens with Terminate instead of a
/// startup packet (node-postgres does this when it disconnects at once).
fn reply_to_early_terminate(port: u16) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(&[b'X', 0, 0, 0, 4]).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn a_bad_startup_length_closes_silently_like_postgres() {
    let p = start(1, "");
    let direct = reply_to_early_terminate(shared().port());
    assert!(direct.is_empty(), "PostgreSQL says nothing: {direct:?}");
    assert_eq!(reply_to_early_terminate(p.port()), direct);
}

/// What a statement answered: its first value, or the SQLSTATE.
async fn value_or_code(c: &tokio_postgres::Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(msgs) => msgs
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default(),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// currval/lastval read what nextval left in the server session. Through transaction
/// pooling they answer exactly when the client's server connection is the one it used last
/// (and nobody used it in between), or after a statement of the same checkout that may
/// call nextval; otherwise pgvane refuses with 0A000, never another client's value.
#[tokio::test]
async fn sequence_state_is_read_only_where_it_lives() {
    let pg = shared();
    pg.psql(
        "app",
        "DROP TABLE IF EXISTS seq_rows; CREATE TABLE seq_rows(id serial, v int); \
         DROP SEQUENCE IF EXISTS seq_s; CREATE SEQUENCE seq_s",
    );
    let p = start(1, "");
    let a = through(&p).await;
    let b = through(&p).await;
    let first = value_or_code(&a, "SELECT nextval('seq_s')").await;
    // Alone on its server: exactly PostgreSQL's answers.
    assert_eq!(value_or_code(&a, "SELECT currval('seq_s')").await, first);
    assert_eq!(value_or_code(&a, "SELECT lastval()").await, first);
    // Another client's nextval on the same (only) server connection in between.
    let other = value_or_code(&b, "SELECT nextval('seq_s')").await;
    assert_ne!(other, first);
    assert_eq!(
        value_or_code(&a, "SELECT currval('seq_s')").await,
        "0A000",
        "never the other client's value"
    );
    let e = a.simple_query("SELECT lastval()").await.unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("INSERT ... RETURNING"), "{msg}");
    // In a transaction the refusal fails it, as an error from PostgreSQL would.
    a.simple_query("BEGIN").await.unwrap();
    assert_eq!(value_or_code(&a, "SELECT lastval()").await, "0A000");
    assert_eq!(value_or_code(&a, "SELECT 1").await, "25P02");
    a.simple_query("ROLLBACK").await.unwrap();
    // The habit that matters: nextval (here a serial default) and currval in one transaction.
    value_or_code(&b, "SELECT nextval('seq_s')").await;
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("INSERT INTO seq_rows(v) VALUES (1)")
        .await
        .unwrap();
    let id = value_or_code(&a, "SELECT currval('seq_rows_id_seq')").await;
    a.simple_query("COMMIT").await.unwrap();
    assert_eq!(value_or_code(&a, "SELECT max(id) FROM seq_rows").await, id);
    // The extended protocol is refused the same way (and nothing runs).
    value_or_code(&b, "SELECT 1").await;
    let e = a.query_one("SELECT lastval()", &[]).await.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("0A000"),
        "{e:?}"
    );
    assert_eq!(value_or_code(&a, "SELECT 2").await, "2", "usable after it");
}

/// With more than one server connection, a client's next statement finds the server that
/// holds its sequence state (others take another idle one), so currval answers.
#[tokio::test]
async fn a_clients_sequence_state_keeps_its_server_when_another_is_idle() {
    let pg = shared();
    pg.psql(
        "app",
        "DROP SEQUENCE IF EXISTS seq_aff; CREATE SEQUENCE seq_aff",
    );
    let p = start(2, "");
    let a = through(&p).await;
    let b = through(&p).await;
    // Two server connections open and idle.
    a.simple_query("BEGIN").await.unwrap();
    b.simple_query("BEGIN").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    a.simple_query("COMMIT").await.unwrap();
    b.simple_query("COMMIT").await.unwrap();
    for round in 0..5 {
        let v = value_or_code(&a, "SELECT nextval('seq_aff')").await;
        // b would take the server a just released (the most recently used) if nothing
        // kept it for a.
        assert_eq!(value_or_code(&b, "SELECT 7").await, "7");
        assert_eq!(
            value_or_code(&a, "SELECT currval('seq_aff')").await,
            v,
            "round {round}"
        );
    }
}

/// PostgreSQL refuses DROP DATABASE, and CREATE DATABASE from a template, while other
/// sessions use that database. A pooled connection nobody uses is not one a direct client
/// would have had: pgvane closes its idle ones first, so these succeed as they would directly.
#[tokio::test]
async fn idle_pooled_connections_do_not_block_drop_or_create_database() {
    let pg = shared();
    for db in ["sess_victim", "sess_tpl", "sess_copy"] {
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    }
    pg.psql("postgres", "CREATE DATABASE sess_victim");
    pg.psql("postgres", "CREATE DATABASE sess_tpl");
    let mut cfg = config(free_port(), pg.port(), 1, "");
    for db in ["sess_victim", "sess_tpl"] {
        cfg.push_str(&format!(
            "\n[[databases]]\nname = \"{db}\"\n  [[databases.shards]]\n  \
             primary = {{ host = \"127.0.0.1\", port = {}, dbname = \"{db}\" }}\n",
            pg.port()
        ));
    }
    let p = Pgvane::start(&cfg);
    for db in ["sess_victim", "sess_tpl"] {
        let c = connect(&format!(
            "host=127.0.0.1 port={} user=app password=app-secret dbname={db}",
            p.port()
        ))
        .await;
        c.simple_query("SELECT 1").await.unwrap();
        // The client leaves; its server connection stays in pgvane's pool.
    }
    let c = through(&p).await;
    // Extended protocol (tokio-postgres' execute), then the simple protocol.
    c.execute("CREATE DATABASE sess_copy TEMPLATE sess_tpl", &[])
        .await
        .expect("CREATE DATABASE from a template pgvane had pooled");
    c.batch_execute("DROP DATABASE sess_victim")
        .await
        .expect("DROP DATABASE of a database pgvane had pooled");
    let left = pg.psql(
        "postgres",
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database \
         WHERE datname LIKE 'sess\\_%'",
    );
    assert_eq!(left.trim(), "sess_copy,sess_tpl");
    // A database a client is using is reported as PostgreSQL reports it.
    let user = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=sess_tpl",
        p.port()
    ))
    .await;
    user.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let err = c
        .batch_execute("DROP DATABASE sess_tpl")
        .await
        .expect_err("a database in use");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
    );
    user.batch_execute("COMMIT").await.unwrap();
    drop(user);
    for db in ["sess_tpl", "sess_copy"] {
        c.batch_execute(&format!("DROP DATABASE {db}"))
            .await
            .unwrap();
    }
}

/// A library (here PL/pgSQL) cannot be unloaded from a backend; with
/// `server_close_on_library_load` the next client gets a backend as fresh as a direct
/// connection: a `plpgsql.*` placeholder can be set there, as before the first PL/pgSQL use.
/// A backend in which no library was loaded is reused. (Session mode only: in transaction
/// mode a client's session spans servers, and closing one would lose its sequence state.)
#[tokio::test]
async fn a_backend_that_loaded_a_library_is_not_reused_when_asked() {
    const PLACEHOLDER: &str = "SET plpgsql.extra_foo_warnings = true";
    // Directly: a fresh backend accepts it.
    direct().await.batch_execute(PLACEHOLDER).await.unwrap();
    {
        let mode = "session";
        let p = start(
            1,
            &format!("pool_mode = \"{mode}\"\nserver_close_on_library_load = true"),
        );
        let pid = |c: tokio_postgres::Client| async move {
            let r = row(&c, "SELECT pg_backend_pid()").await;
            drop(c);
            r
        };
        // No library loaded: the same backend serves the next client.
        let first = pid(through(&p).await).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(pid(through(&p).await).await, first, "{mode}: reused");
        let a = through(&p).await;
        a.batch_execute("DO $$ BEGIN PERFORM 1; END $$")
            .await
            .unwrap();
        drop(a);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let b = through(&p).await;
        b.batch_execute(PLACEHOLDER)
            .await
            .unwrap_or_else(|e| panic!("{mode}: the next client's backend is fresh: {e}"));
        assert_ne!(row(&b, "SELECT pg_backend_pid()").await, first, "{mode}");
    }
    // Without the option the backend is reused, as PgBouncer does.
    let p = start(1, "pool_mode = \"session\"");
    let a = through(&p).await;
    a.batch_execute("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = through(&p).await.batch_execute(PLACEHOLDER).await;
    assert!(err.is_err(), "a reused backend has PL/pgSQL loaded");
}

/// Transaction mode with `server_close_on_library_load`: a client whose transaction loads a
/// library stays on that backend (which sees it loaded, as its own connection would), other
/// clients get backends without it, and the backend is closed when the client leaves.
#[tokio::test]
async fn in_transaction_mode_a_client_that_loaded_a_library_keeps_its_backend() {
    const PLACEHOLDER: &str = "SET plpgsql.extra_foo_warnings = true";
    let p = start(
        2,
        "pool_mode = \"transaction\"\nserver_close_on_library_load = true",
    );
    let a = through(&p).await;
    a.batch_execute("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .unwrap();
    let pa = row(&a, "SELECT pg_backend_pid()").await;
    let b = through(&p).await;
    // B runs while A holds its backend: B's is another, without PL/pgSQL.
    b.batch_execute(PLACEHOLDER)
        .await
        .unwrap_or_else(|e| panic!("a backend without PL/pgSQL accepts the placeholder: {e}"));
    assert_eq!(
        row(&b, "SHOW plpgsql.extra_foo_warnings").await,
        [Some("true".to_string())]
    );
    assert_ne!(row(&b, "SELECT pg_backend_pid()").await, pa);
    // A's own connection has PL/pgSQL loaded: PostgreSQL refuses the name there.
    let err = a.batch_execute(PLACEHOLDER).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42602"), "{err}");
    for _ in 0..3 {
        assert_eq!(row(&a, "SELECT pg_backend_pid()").await, pa, "A stays");
    }
    drop(a);
    drop(b);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..2 {
        let c = through(&p).await;
        c.batch_execute(PLACEHOLDER)
            .await
            .unwrap_or_else(|e| panic!("the library's backend was closed: {e}"));
        assert_ne!(row(&c, "SELECT pg_backend_pid()").await, pa);
    }
}

/// Session mode: BackendKeyData carries the process id of the session's backend, as
/// PostgreSQL's does, so `pg_backend_pid()`, Notify senders and `pg_terminate_backend`
/// agree with what the client was told; cancel still works through pgvane's own secret.
#[tokio::test]
async fn session_mode_reports_the_backends_own_process_id() {
    use common::wire::{query, Wire};
    let p = start(2, "pool_mode = \"session\"\nauth_type = \"trust\"");
    let (mut a, msgs) = Wire::login_with(p.port(), &[("user", "app"), ("database", "app")]);
    let key = msgs
        .iter()
        .find(|m| m.tag == b'K')
        .unwrap_or_else(|| panic!("BackendKeyData in {msgs:?}"));
    let pid = i32::from_be_bytes([key.body[0], key.body[1], key.body[2], key.body[3]]);
    assert_eq!(a.simple("SELECT pg_backend_pid()"), [pid.to_string()]);
    a.simple("LISTEN pgvane_pid_check");
    a.send(&query("NOTIFY pgvane_pid_check"));
    let got = a.until_ready(std::time::Duration::from_secs(5));
    let note = got
        .iter()
        .find(|m| m.tag == b'A')
        .expect("the notification");
    assert_eq!(
        i32::from_be_bytes([note.body[0], note.body[1], note.body[2], note.body[3]]),
        pid,
        "the notifying backend is the one reported"
    );

    // Cancel with the key the client was given.
    let c = through(&p).await;
    let token = c.cancel_token();
    let sleeper =
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(20)").await.map(|_| ()) });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request");
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), sleeper)
        .await
        .expect("cancelled in time")
        .expect("task")
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");

    // Terminating the reported process ends that client's session, as directly.
    let b = through(&p).await;
    assert_eq!(
        row(&b, &format!("SELECT pg_terminate_backend({pid})")).await,
        [Some("t".to_string())]
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    a.send(&query("SELECT 1"));
    let after = a.drain(std::time::Duration::from_millis(500));
    let fatal = after
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("an error after termination: {after:?}"));
    assert_eq!(fatal.field(b'V').as_deref(), Some("FATAL"), "{after:?}");
}

/// Session mode with every server taken: a login does not wait for another client's session
/// (as with PgBouncer, the server is assigned at the first statement), and the statement
/// runs once a server is free.
#[tokio::test]
async fn session_mode_login_does_not_wait_for_a_busy_pool() {
    let p = start(1, "pool_mode = \"session\"");
    let a = through(&p).await;
    assert_eq!(row(&a, "SELECT 1").await, [Some("1".to_string())]);
    let b = tokio::time::timeout(std::time::Duration::from_secs(2), through(&p))
        .await
        .expect("a login while the only server is another session's");
    drop(a);
    assert_eq!(row(&b, "SELECT 2").await, [Some("2".to_string())]);
}
