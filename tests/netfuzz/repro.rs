//! Minimal reproductions distilled from the network fuzzer: one short scripted session at
//! a time against pgvane with a pool of one server connection, so any server connection a
//! session leaves held (or any answer left in its stream) shows up at once.
//!
//! Owns: the scenario list and, per scenario: the session gets its own answer (a marker
//! query after the script, unless the script ends by disconnecting), then after the session
//! is gone no server stays held (admin SHOW POOLS) and a fresh tokio-postgres client gets
//! the right answer to a query needing a parameter sync.
//!
//! Must not: depend on timing beyond bounded waits.

use std::time::Duration;

use super::wire::{self, login, Login, Raw, ReadEnd};

/// A scripted session: the messages after login, and whether it then disconnects at once.
pub struct Scenario {
    pub name: &'static str,
    pub msgs: Vec<Vec<u8>>,
    pub cut: bool,
}

fn sc(name: &'static str, msgs: Vec<Vec<u8>>, cut: bool) -> Scenario {
    Scenario { name, msgs, cut }
}

pub fn scenarios() -> Vec<Scenario> {
    use wire::*;
    let copy_in = |end: Vec<u8>| vec![query("COPY nf_junk FROM STDIN"), frame(b'd', b"1\n"), end];
    vec![
        sc("simple query", vec![query("SELECT 1")], false),
        sc("empty query", vec![query("")], false),
        sc("parse syntax error + sync", vec![parse("", "SELEC 1", &[]), sync()], false),
        sc("bind unknown statement + sync", vec![bind("", "s1", &[]), sync()], false),
        sc("describe/close unknown", vec![target(b'D', b'S', "nope"), target(b'C', b'P', "nope"), sync()], false),
        sc(
            "execute row limit",
            vec![parse("", "SELECT generate_series(1, 5)", &[]), bind("p1", "", &[]), execute("p1", 2), execute("p1", 2), sync()],
            false,
        ),
        sc("named parse/bind/execute", vec![parse("s1", "SELECT $1::int8", &[]), bind("", "s1", &[Some("5")]), execute("", 0), sync()], false),
        sc("copy out", vec![query("COPY (SELECT generate_series(1, 20)) TO STDOUT")], false),
        sc("copy in + done", copy_in(frame(b'c', &[])), false),
        // Fails now and then on main (no answer after CopyFail): run it a few times.
        sc("copy in + fail", copy_in(frame(b'f', b"gave up\0")), false),
        sc("copy in + fail (2)", copy_in(frame(b'f', b"gave up\0")), false),
        sc("copy in + fail (3)", copy_in(frame(b'f', b"gave up\0")), false),
        sc("copy in + fail (4)", copy_in(frame(b'f', b"gave up\0")), false),
        sc("function call", vec![function_call(1317, "12")], false),
        sc("flush without sync", vec![parse("", "SELECT 1", &[]), flush()], false),
        sc("LISTEN", vec![query("LISTEN nf")], false),
        sc("extended SET", vec![parse("", "SET statement_timeout = '10s'", &[]), bind("", "", &[]), execute("", 0), sync()], false),
        sc(
            "three pipelined batches",
            (0..3).flat_map(|i| [parse("", &format!("SELECT {i}"), &[]), bind("", "", &[]), execute("", 0), sync()]).collect(),
            false,
        ),
        sc("BEGIN, then disconnect", vec![query("BEGIN")], true),
        sc("pg_sleep query, disconnect before the answer", vec![query("SELECT pg_sleep(0.3)")], true),
        sc("extended pg_sleep without sync, disconnect", vec![parse("", "SELECT pg_sleep(0.3)", &[]), bind("", "", &[]), execute("", 0), flush()], true),
        sc("copy in started, disconnect", vec![query("COPY nf_junk FROM STDIN"), frame(b'd', b"1\n")], true),
        sc("half a Bind, disconnect", vec![parse("", "SELECT 1", &[]), bind("", "", &[])[..7].to_vec()], true),
        sc("huge length header", vec![vec![b'Q', 0x7f, 0xff, 0xff, 0xf0, b'S']], false),
        sc("SET client_encoding, disconnect", vec![query("SET client_encoding = 'LATIN1'")], true),
        sc("copy out + half a Close, disconnect", vec![query("COPY (SELECT generate_series(1, 20)) TO STDOUT"), target(b'C', b'S', "")[..6].to_vec()], true),
        sc("select + half a Close, disconnect", vec![query("SELECT generate_series(1, 50)"), target(b'C', b'S', "")[..6].to_vec()], true),
        sc("copy out + close + half execute, disconnect", vec![query("COPY (SELECT generate_series(1, 20)) TO STDOUT"), target(b'C', b'S', ""), execute("", 0)[..4].to_vec()], true),
        sc("execute unnamed portal (none) + close, no sync, disconnect", vec![execute("", 0), target(b'C', b'S', "nfs")], true),
        sc("function call, disconnect", vec![function_call(1317, "12")], true),
        sc("copy out, disconnect", vec![query("COPY (SELECT generate_series(1, 20)) TO STDOUT")], true),
        // From netfuzz_solo seed 4284261137 case 4: a Query whose body goes on after the
        // terminator (PostgreSQL: 08P01 "invalid message format").
        sc("Query with bytes after its terminator", vec![frame(b'Q', b"SELECT 1\0junk")], false),
        sc("COPY Query with bytes after its terminator", vec![frame(b'Q', b"COPY (SELECT 1) TO STDOUT\0junk")], false),
        sc("COPY Query with bytes after its terminator, disconnect", vec![frame(b'Q', b"COPY (SELECT 1) TO STDOUT\0junk")], true),
        sc("function call + execute unknown portal, disconnect", vec![function_call(1317, "12"), execute("p1", 0)], true),
        sc("insert + function call + execute + bind, half a parse, disconnect",
            vec![query("INSERT INTO nf_junk VALUES (1)"), function_call(1317, "12"), execute("p1", 0), bind("", "", &[None]), parse("", "SELECT 1", &[])[..9].to_vec()], true),
        sc("solo seed 4284261137 case 4 rounds 1-3 verbatim", vec![
            b"Q\x00\x00\x002COPY (SELECT generate_seri".to_vec(),
            b"E\x00\x00\x00\t\x00\x00\x00\x00\x00C\x00\x00\x00\tSnfs\x00Q\x00\x00\x00(INSERT INTO nf_junk VALUES (334388)\x00".to_vec(),
            b"F\x00\x00\x00\x14\x00\x00\x05%\x00\x00\x00\x01\x00\x00\x00\x0212\x00\x00E\x00\x00\x00\x0bp1\x00\x00\x00\x00\x00B\x00\x00\x00\x10\x00\x00\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00P\x00\x00\x00\x88\x00\x00\x8d\x7f[C\x8b\xd7H\xb0\x04\xdc\x00\x00".to_vec(),
        ], true),
    ]
}

/// Runs one scenario on a fresh connection; returns what went wrong in the session itself.
pub async fn run(port: u16, s: &Scenario) -> Result<(), String> {
    let mut c = Raw::connect(port).await.map_err(|e| e.to_string())?;
    let r = login(
        &mut c,
        "app",
        "app-secret",
        "app",
        Duration::from_secs(10),
        &mut |v| v,
        &mut |v| v,
    )
    .await;
    if r != Login::Ok {
        return Err(format!("login: {r:?}"));
    }
    if !c.send(&s.msgs.concat()).await {
        return Err("write blocked".into());
    }
    if s.cut {
        return Ok(());
    }
    let mut m = wire::sync();
    m.extend_from_slice(&wire::query("SELECT 'nfmark-repro'"));
    if !c.send(&m).await {
        return Ok(()); // closed by pgvane: a refusal, allowed
    }
    loop {
        match c.frame(Duration::from_secs(5)).await {
            Err(ReadEnd::Closed) => return Ok(()),
            Err(ReadEnd::Timeout) => return Err("no answer to the marker in 5 s".into()),
            Ok(f) if f.tag == b'D' => {
                let got = f.first_column().unwrap_or_default();
                if got == "nfmark-repro" {
                    return match c.until(b'Z', Duration::from_secs(5)).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(format!("no ReadyForQuery after the marker row: {e:?}")),
                    };
                }
            }
            Ok(_) => {}
        }
    }
}
