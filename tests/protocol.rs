//! Protocol robustness: every message sequence of the extended and simple protocol gets, through
//! pgvane, the same answers PostgreSQL gives directly — on a plain, a read/write-split and a
//! sharded database — and no sequence leaves a client waiting or a server held.

mod common;

use std::time::Duration;

use common::wire::{self, tags, Msg, Wire};
use common::*;

const T: Duration = Duration::from_secs(5);

fn config(listen: u16, pg: &PgServer, replica: Option<&PgServer>, general: &str) -> String {
    let port = pg.port();
    let replicas = replica
        .map(|r| {
            format!(
                "replicas = [{{ host = \"127.0.0.1\", port = {}, dbname = \"app\" }}]",
                r.port()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
auth_type = "trust"
default_pool_size = 2
query_wait_timeout = "5s"
{general}

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {port}, dbname = "app" }}

[[databases]]
name = "split"
  [databases.routing]
  read_write_split = true
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {port}, dbname = "app" }}
  {replicas}

[[databases]]
name = "shop"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {port}, dbname = "proto_shop_0" }}
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {port}, dbname = "proto_shop_1" }}
  [[databases.sharded_tables]]
  table = "orders"
  column = "customer_id"
  type = "bigint"
"#
    )
}

fn setup_shards(pg: &PgServer) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| create_shards(pg));
}

fn create_shards(pg: &PgServer) {
    for i in 0..2 {
        let name = format!("proto_shop_{i}");
        pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        pg.psql("postgres", &format!("CREATE DATABASE {name} OWNER app"));
        pg.psql(
            &name,
            "CREATE TABLE orders (customer_id bigint, total int); \
             ALTER TABLE orders OWNER TO app; \
             CREATE TABLE proto_copy (v int); ALTER TABLE proto_copy OWNER TO app",
        );
    }
    pg.psql(
        "app",
        "DROP TABLE IF EXISTS proto_copy; CREATE TABLE proto_copy (v int); \
         ALTER TABLE proto_copy OWNER TO app",
    );
}

/// Send each step as one write; after a step read until as many ReadyForQuery as the step
/// asks for (Sync, Query, FunctionCall) or a CopyInResponse, then collect what else arrives
/// briefly.
fn run_steps(w: &mut Wire, steps: &[Vec<Vec<u8>>]) -> Vec<Msg> {
    let mut out = Vec::new();
    for step in steps {
        let owed = step
            .iter()
            .filter(|m| matches!(m[0], b'S' | b'Q' | b'F'))
            .count();
        w.send_all(step);
        let mut got = 0;
        while got < owed {
            match w.recv(T) {
                Some(m) => {
                    let copy_in = m.tag == b'G';
                    if m.tag == b'Z' {
                        got += 1;
                    }
                    out.push(m);
                    if copy_in {
                        break; // the client's turn: the next step sends the data
                    }
                }
                None => {
                    out.push(Msg {
                        tag: b'!',
                        body: b"timeout".to_vec(),
                    });
                    return out;
                }
            }
        }
        out.extend(w.drain(Duration::from_millis(150)));
    }
    out
}

/// What a client can tell apart: message types, SQLSTATEs, row values, command tags and the
/// transaction status of each ReadyForQuery.
fn observable(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| !matches!(m.tag, b'N' | b'S'))
        .map(|m| match m.tag {
            b'E' => format!(
                "E {} {}",
                m.code().unwrap_or_default(),
                m.field(b'M').unwrap_or_default()
            ),
            b'D' => format!("D {:?}", m.first_value()),
            b'C' => format!("C {}", m.tag_text()),
            b'Z' => format!("Z {}", m.body.first().map(|&b| b as char).unwrap_or('?')),
            b'V' => format!("V {:?}", m.body),
            t => (t as char).to_string(),
        })
        .collect()
}

/// On a sharded database COPY over the extended protocol is refused (0A000, documented).
const EXTENDED_COPY: &str = "copy in, extended with a pipelined sync";

/// The scenarios: each a list of writes.
fn scenarios() -> Vec<(&'static str, Vec<Vec<Vec<u8>>>)> {
    use wire::*;
    vec![
        (
            "parse error, flush, then sync in a separate write",
            vec![
                vec![parse("", "selec 1"), flush()],
                vec![sync()],
                vec![query("select 42")],
            ],
        ),
        (
            "execute error before flush, sync later",
            vec![
                vec![
                    parse("", "select 1 / $1::int"),
                    bind("", "", &[Some("0")]),
                    execute("", 0),
                    flush(),
                ],
                vec![sync()],
                vec![query("select 43")],
            ],
        ),
        (
            "error then sync, then two simple queries",
            vec![
                vec![
                    parse("", "selec 1"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                vec![query("select 1")],
                vec![query("select 2")],
            ],
        ),
        (
            "a named parse after an error is discarded until sync",
            vec![
                vec![parse("", "selec 1"), flush()],
                vec![
                    parse("s9", "select 9"),
                    bind("", "s9", &[]),
                    execute("", 0),
                    flush(),
                ],
                vec![sync()],
                vec![bind("", "s9", &[]), execute("", 0), sync()],
                vec![query("select 20")],
            ],
        ),
        (
            "flush without sync keeps the batch open",
            vec![
                vec![
                    parse("", "select 7"),
                    bind("", "", &[]),
                    describe(b'P', ""),
                    execute("", 0),
                    flush(),
                ],
                vec![
                    parse("", "select 8"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                vec![query("select 9")],
            ],
        ),
        (
            "describe and close of unknown names",
            vec![
                vec![describe(b'S', "nosuch"), sync()],
                vec![describe(b'P', "nosuch"), sync()],
                vec![close(b'S', "nosuch"), close(b'P', "nosuch"), sync()],
                vec![query("select 10")],
            ],
        ),
        (
            "execute with a row limit and portal suspended",
            vec![
                vec![
                    parse("", "select generate_series(1, 5)"),
                    bind("", "", &[]),
                    execute("", 2),
                    execute("", 2),
                    execute("", 0),
                    sync(),
                ],
                vec![query("select 11")],
            ],
        ),
        (
            "pipelined batches with an error in the middle",
            vec![vec![
                parse("", "select 1"),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                parse("", "select 1/0"),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                parse("", "select 3"),
                bind("", "", &[]),
                execute("", 0),
                sync(),
                query("select 4"),
            ]],
        ),
        (
            "named statements: prepare, describe, execute twice, close",
            vec![
                vec![
                    parse("s1", "select $1::int + 1"),
                    describe(b'S', "s1"),
                    sync(),
                ],
                vec![bind("", "s1", &[Some("41")]), execute("", 0), sync()],
                vec![bind("", "s1", &[Some("1")]), execute("", 0), sync()],
                vec![close(b'S', "s1"), sync()],
                vec![bind("", "s1", &[Some("1")]), execute("", 0), sync()],
                vec![query("select 12")],
            ],
        ),
        (
            "empty queries",
            vec![
                vec![query("")],
                vec![parse("", ""), bind("", "", &[]), execute("", 0), sync()],
                vec![query("select 13")],
            ],
        ),
        (
            "errors in an explicit transaction",
            vec![
                vec![query("begin")],
                vec![query("select 1/0")],
                vec![query("select 1")],
                vec![
                    parse("", "select 2"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                vec![query("rollback")],
                vec![query("select 14")],
            ],
        ),
        (
            "copy out, simple and extended",
            vec![
                vec![query("copy (select generate_series(1, 3)) to stdout")],
                vec![
                    parse("", "copy (select 5) to stdout"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                vec![query("select 15")],
            ],
        ),
        (
            "multi-statement query with an error in the middle",
            vec![
                vec![query("select 1; select 1/0; select 3")],
                vec![query("select 16")],
            ],
        ),
        (
            "copy in, simple, with bad data",
            vec![
                vec![query("copy proto_copy from stdin")],
                vec![copy_data(b"1\n2\n"), copy_done()],
                vec![query("copy proto_copy from stdin")],
                vec![copy_data(b"x\n"), copy_done()],
                vec![query("select 18")],
            ],
        ),
        (
            EXTENDED_COPY,
            vec![
                vec![
                    parse("", "copy proto_copy from stdin"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                vec![copy_data(b"3\n"), copy_done(), sync()],
                vec![query("select 18")],
            ],
        ),
        (
            "a query pipelined behind copy from stdin ends the copy and is consumed",
            vec![
                vec![query("copy proto_copy from stdin"), query("select 1")],
                vec![query("select 20")],
            ],
        ),
        (
            "an extended batch pipelined behind copy from stdin",
            vec![
                vec![
                    query("copy proto_copy from stdin"),
                    parse("", "select 2"),
                    bind("", "", &[]),
                    execute("", 0),
                    sync(),
                ],
                vec![query("select 21")],
            ],
        ),
        (
            "function call: result and error",
            vec![
                vec![function_call(177, &[2, 3])],
                vec![function_call(177, &[i32::MAX, 1])],
                vec![query("select 19")],
            ],
        ),
        (
            "sync only, flush only",
            vec![
                vec![sync()],
                vec![flush()],
                vec![sync(), sync()],
                vec![query("select 17")],
            ],
        ),
    ]
}

/// Equal, except that pgvane may refuse clearly (0A000) where PostgreSQL reported an error.
fn same_or_refused(got: &[String], want: &[String]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| g == w || (g.starts_with("E 0A000 ") && w.starts_with("E ")))
}

fn compare_all(db: &str, p: &Pgvane, pg: &PgServer) {
    let mut failures = Vec::new();
    for (name, steps) in scenarios() {
        if db == "shop" && name == EXTENDED_COPY {
            let mut through = Wire::login(p.port(), "app", db);
            let got = observable(&run_steps(&mut through, &steps));
            assert!(
                got.first().is_some_and(|e| e.starts_with("E 0A000")),
                "{got:?}"
            );
            assert_eq!(through.simple("select 98"), ["98"]);
            continue;
        }
        let mut direct = Wire::login(pg.port(), "postgres", "app");
        let want = observable(&run_steps(&mut direct, &steps));
        let mut through = Wire::login(p.port(), "app", db);
        let got = observable(&run_steps(&mut through, &steps));
        // The connection is still usable afterwards, unless PostgreSQL closed it (a client
        // that broke the protocol gets FATAL there).
        let usable = |w: &mut Wire| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.simple("select 99")))
                .is_ok_and(|v| v == ["99"])
        };
        let direct_usable = usable(&mut direct);
        let after =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| through.simple("select 99")));
        let through_usable = after.as_ref().is_ok_and(|v| v == &["99"]);
        if !same_or_refused(&got, &want) || through_usable != direct_usable {
            failures.push(format!(
                "[{db}] {name}:\n  postgres: {want:?}\n  pgvane:   {got:?}\n  then select 99: {:?}",
                after.ok()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// No server stays active once every client is gone.
fn assert_no_held_servers(p: &Pgvane) {
    let mut last = String::new();
    let ok = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let out = psql_cmd(p.port(), "app", "pgvane", None)
            .args(["-At", "-c", "SHOW POOLS"])
            .output()
            .expect("psql");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // database, user, cl_active, cl_waiting, 2 cancel columns, sv_active
        let idle = text.lines().all(|l| {
            let c: Vec<&str> = l.split('|').collect();
            c.len() > 6 && c[2] == "0" && c[3] == "0" && c[6] == "0"
        });
        last = text;
        idle.then_some(())
    });
    assert!(ok.is_some(), "servers held after all clients left:\n{last}");
}

fn pgvane(pg: &PgServer, replica: Option<&PgServer>, general: &str) -> Pgvane {
    let general = format!("{general}\nadmin_users = [\"app\"]");
    Pgvane::start_fn(|port| config(port, pg, replica, &general))
}

#[test]
fn every_sequence_answers_like_postgres_on_a_plain_database() {
    let pg = shared();
    setup_shards(pg);
    let p = pgvane(pg, None, "");
    compare_all("app", &p, pg);
    assert_no_held_servers(&p);
}

#[test]
fn every_sequence_answers_like_postgres_with_read_write_split() {
    let pg = shared();
    setup_shards(pg);
    let replica = shared_replica();
    let p = pgvane(pg, Some(replica), "");
    compare_all("split", &p, pg);
    assert_no_held_servers(&p);
}

#[test]
fn every_sequence_answers_like_postgres_on_a_sharded_database() {
    let pg = shared();
    setup_shards(pg);
    let p = pgvane(pg, None, "");
    compare_all("shop", &p, pg);
    assert_no_held_servers(&p);
}

#[test]
fn every_sequence_answers_like_postgres_in_session_mode() {
    let pg = shared();
    setup_shards(pg);
    let p = pgvane(pg, None, "pool_mode = \"session\"");
    compare_all("app", &p, pg);
    assert_no_held_servers(&p);
}

/// Reproduction 10: in session mode the client's server is its session. When that backend is
/// terminated, PostgreSQL closes the client's connection (FATAL 57P01) and runs nothing more;
/// pgvane must do the same, never run the client's next statement on a fresh backend after
/// reporting an error.
#[test]
fn session_mode_terminated_backend_closes_the_client_like_postgres() {
    let pg = shared();
    setup_shards(pg);
    pg.psql(
        "app",
        "CREATE TABLE IF NOT EXISTS proto_writes (id int); ALTER TABLE proto_writes OWNER TO app; TRUNCATE proto_writes",
    );
    let p = pgvane(pg, None, "pool_mode = \"session\"");
    let mut w = Wire::login(p.port(), "app", "app");
    let pid = w.simple("select pg_backend_pid()");
    let pid = pid[0].clone();
    pg.psql("postgres", &format!("select pg_terminate_backend({pid})"));
    std::thread::sleep(Duration::from_millis(300));
    // Whatever arrived unprompted must be FATAL (as from PostgreSQL), never a plain ERROR.
    let unprompted = w.drain(Duration::from_millis(200));
    for m in &unprompted {
        assert!(
            m.tag == b'E' && m.field(b'S').as_deref() == Some("FATAL"),
            "unprompted message: {m:?}"
        );
    }
    // The next statement is not executed anywhere.
    let _ = std::io::Write::write_all(
        &mut w.s,
        &wire::query("insert into proto_writes values (1)"),
    );
    let rest = w.drain(Duration::from_millis(500));
    assert!(
        !rest.iter().any(|m| m.tag == b'C'),
        "statement ran after the session's backend died: {:?}",
        tags(&rest)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pg.psql("app", "select count(*) from proto_writes"), "0");
    // Other clients are fine.
    let mut other = Wire::login(p.port(), "app", "app");
    assert_eq!(other.simple("select 5"), ["5"]);
}
