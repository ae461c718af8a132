//! Writes the seed corpora in `fuzz/corpus/<target>/` (run: `cargo run --release --manifest-path fuzz/Cargo.toml --example gen_corpus`).
//!
//! Owns: building real client traffic byte for byte as clients send it: the frontend
//! messages through `postgres-protocol` (the encoder tokio-postgres uses), SCRAM messages
//! through its `ScramSha256` client, and a few sequences psql and pgbench send (simple
//! Query, extended-protocol batches, COPY, FunctionCall, Describe/Close).
//!
//! Must not: depend on a running server; the output is deterministic except SCRAM nonces.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend as fe;
use postgres_protocol::IsNull;

type Seed = (&'static str, Vec<u8>);

fn bind(stmt: &str, portal: &str, values: &[Option<&str>], binary: bool) -> BytesMut {
    let mut b = BytesMut::new();
    let fmt = if binary { vec![1i16] } else { vec![] };
    let r = fe::bind(
        portal,
        stmt,
        fmt,
        values.iter().copied(),
        |v, buf| match v {
            Some(s) => {
                buf.put_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        Some(1),
        &mut b,
    );
    assert!(r.is_ok());
    b
}

fn frontend_seeds() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = Vec::new();
    let mut add = |name, build: &dyn Fn(&mut BytesMut)| {
        let mut b = BytesMut::new();
        build(&mut b);
        // Byte 0 selects the frame size limit in the target: 0 = 1 MiB.
        let mut v = vec![0u8];
        v.extend_from_slice(&b);
        seeds.push((name, v));
    };
    add("simple_query", &|b| fe::query("SELECT 1", b).unwrap());
    add("simple_multi", &|b| {
        fe::query(
            "BEGIN; INSERT INTO t VALUES (1); SELECT * FROM t; COMMIT",
            b,
        )
        .unwrap()
    });
    add("empty_query", &|b| fe::query("", b).unwrap());
    add("set_and_hint", &|b| {
        fe::query("/* pgvane: shard=1 */ SET search_path = public", b).unwrap()
    });
    // tokio-postgres: prepare (Parse/Describe/Sync), then query (Bind/Execute/Sync).
    add("tokio_postgres_prepare", &|b| {
        fe::parse("s0", "SELECT $1::int8 + 1", [20u32], b).unwrap();
        fe::describe(b'S', "s0", b).unwrap();
        fe::sync(b);
    });
    add("tokio_postgres_execute", &|b| {
        b.extend_from_slice(&bind("s0", "", &[Some("\0\0\0\0\0\0\0\x2a")], true));
        fe::execute("", 0, b).unwrap();
        fe::sync(b);
    });
    // psql/libpq unnamed statement, PQexecParams style.
    add("libpq_exec_params", &|b| {
        fe::parse("", "SELECT $1, $2", [25u32, 0], b).unwrap();
        b.extend_from_slice(&bind("", "", &[Some("hello"), None], false));
        fe::describe(b'P', "", b).unwrap();
        fe::execute("", 0, b).unwrap();
        fe::sync(b);
    });
    // pgbench -M extended / -M prepared.
    add("pgbench_prepared", &|b| {
        fe::parse(
            "P0_1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
            [],
            b,
        )
        .unwrap();
        b.extend_from_slice(&bind("P0_1", "", &[Some("-4000"), Some("12")], false));
        fe::describe(b'P', "", b).unwrap();
        fe::execute("", 0, b).unwrap();
        fe::sync(b);
    });
    add("portal_row_limit", &|b| {
        fe::parse("", "SELECT generate_series(1, 10)", [], b).unwrap();
        b.extend_from_slice(&bind("", "cur", &[], false));
        fe::execute("cur", 3, b).unwrap();
        fe::execute("cur", 3, b).unwrap();
        fe::close(b'P', "cur", b).unwrap();
        fe::sync(b);
    });
    add("flush_no_sync", &|b| {
        fe::parse("x", "SELECT 1", [], b).unwrap();
        fe::flush(b);
    });
    add("parse_syntax_error", &|b| {
        fe::parse("", "SELEC 1", [], b).unwrap();
        fe::sync(b);
    });
    add("describe_close_unknown", &|b| {
        fe::describe(b'S', "nope", b).unwrap();
        fe::close(b'S', "nope", b).unwrap();
        fe::close(b'P', "nope", b).unwrap();
        fe::sync(b);
    });
    add("pipeline_batches", &|b| {
        for i in 0..3 {
            fe::parse("", &format!("SELECT {i}"), [], b).unwrap();
            b.extend_from_slice(&bind("", "", &[], false));
            fe::execute("", 0, b).unwrap();
            fe::sync(b);
        }
    });
    add("copy_from_stdin", &|b| {
        fe::query("COPY t FROM STDIN", b).unwrap();
        let data = fe::CopyData::new(&b"1\tone\n2\ttwo\n"[..]).unwrap();
        data.write(b);
        fe::copy_done(b);
        fe::copy_fail("client gave up", b).unwrap();
    });
    add("function_call", &|b| {
        // FunctionCall ('F'): oid, formats, args, result format (libpq's PQfn).
        b.put_u8(b'F');
        let body: &[u8] = &[0, 0, 0x04, 0xd2, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0];
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(body);
    });
    add("terminate", &|b| fe::terminate(b));
    add("huge_length_header", &|b| {
        b.put_u8(b'Q');
        b.put_i32(0x7fff_fff0);
        b.put_slice(b"SELECT");
    });
    add("password_message", &|b| {
        fe::password_message(b"app-secret", b).unwrap()
    });
    add("sasl_initial", &|b| {
        let c = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        fe::sasl_initial_response("SCRAM-SHA-256", c.message(), b).unwrap();
    });
    seeds
}

/// Startup/SCRAM seeds in the target's layout: startup body, 0xFF 0x00, SASLInitialResponse
/// body, 0xFF 0x00, client-final (with `@N` standing for the exchange's nonce).
fn startup_seeds() -> Vec<Seed> {
    let sep: &[u8] = b"\xff\x00";
    let startup = |params: &[(&str, &str)]| {
        let mut b = BytesMut::new();
        fe::startup_message(params.iter().copied(), &mut b).unwrap();
        b[4..].to_vec() // the body, after the length
    };
    let sasl_body = |data: &[u8]| {
        let mut b = BytesMut::new();
        fe::sasl_initial_response("SCRAM-SHA-256", data, &mut b).unwrap();
        b[5..].to_vec()
    };
    let join = |a: &[u8], b: &[u8], c: &[u8]| [a, sep, b, sep, c].concat();
    let real_first = ScramSha256::new(b"fuzz-secret", ChannelBinding::unsupported());
    let y_first = ScramSha256::new(b"fuzz-secret", ChannelBinding::unrequested());
    let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let mut ssl = BytesMut::new();
    fe::ssl_request(&mut ssl);
    let mut cancel = BytesMut::new();
    fe::cancel_request(1234, 5678, &mut cancel);
    vec![
        (
            "tokio_postgres_login",
            join(
                &startup(&[
                    ("client_encoding", "UTF8"),
                    ("user", "app"),
                    ("database", "app"),
                ]),
                &sasl_body(real_first.message()),
                format!("c=biws,r=@N,{proof}").as_bytes(),
            ),
        ),
        (
            "psql_login_channel_binding_y",
            join(
                &startup(&[
                    ("user", "app"),
                    ("database", "app"),
                    ("application_name", "psql"),
                    ("client_encoding", "UTF8"),
                    ("options", "-c search_path=public -c statement_timeout=5s"),
                ]),
                &sasl_body(y_first.message()),
                format!("c=eSws,r=@N,x=ext,{proof}").as_bytes(),
            ),
        ),
        ("ssl_request", ssl[4..].to_vec()),
        ("cancel_request", cancel[4..].to_vec()),
        (
            "protocol_3_2",
            join(
                &[&[0u8, 3, 0, 2][..], b"user\0app\0_pq_.foo\0bar\0\0"].concat(),
                &sasl_body(b"n,,n=,r=abcdef"),
                b"c=biws,r=@N,p=AAAA",
            ),
        ),
    ]
}

fn write(dir: &Path, seeds: &[Seed]) {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes).unwrap();
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    write(&root.join("frontend_decoder"), &frontend_seeds());
    write(&root.join("startup_scram"), &startup_seeds());
}
