//! Attacker sessions for the network fuzz test: random and mutated traffic from raw sockets.
//!
//! Owns: generating one case from a seeded RNG (random bytes, a mutated startup packet, a
//! mutated SCRAM exchange, or a valid login followed by batches of extended/simple-protocol
//! messages, some malformed, truncated or cut off mid-request), running it against pgvane
//! with bounded reads, and its own checks where the answer is known: a well-formed batch
//! followed by Sync and a marker query must get that marker back, no one else's, in time.
//!
//! Must not: wait without a deadline, or count anything a correct pooler may legitimately
//! do (refuse, close the connection) as a failure.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::wire::{self, login, Login, Raw, ReadEnd};
use super::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Random,
    Startup,
    Scram,
    Session,
}

pub const KINDS: [Kind; 4] = [Kind::Random, Kind::Startup, Kind::Scram, Kind::Session];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Startup => "startup",
            Kind::Scram => "scram",
            Kind::Session => "session",
        }
    }
}

/// Where to attack: the pgvane port and the logical databases to log in to.
pub struct Target {
    pub port: u16,
    pub dbs: Vec<&'static str>,
    pub kinds: Vec<Kind>,
}

/// Applies 1..=4 random mutations (bit flips, byte changes, inserts, deletes, truncation,
/// interesting 32-bit values, duplicated ranges).
pub fn mutate(rng: &mut StdRng, mut v: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.gen_range(1..=4) {
        let len = v.len();
        match rng.gen_range(0..7) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] = rng.gen();
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                v.splice(i..i, ins);
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 16));
                v.drain(i..j);
            }
            4 if len > 0 => v.truncate(rng.gen_range(0..len)),
            5 if len >= 4 => {
                let i = rng.gen_range(0..=len - 4);
                let vals = [
                    0i32,
                    -1,
                    1,
                    4,
                    5,
                    i32::MAX,
                    i32::MIN,
                    len as i32,
                    0x7fff_fff0,
                ];
                v[i..i + 4].copy_from_slice(&vals.choose(rng).unwrap_or(&0).to_be_bytes());
            }
            6 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 32));
                let dup = v[i..j].to_vec();
                v.splice(j..j, dup);
            }
            _ => {}
        }
    }
    v
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..max);
    (0..n).map(|_| rng.gen()).collect()
}

/// Runs one case; returns its kind and a one-line description (kept for failure reports).
pub async fn run_case(rng: &mut StdRng, t: &Target, id: &str, stats: &Stats) -> (Kind, String) {
    let kind = *t.kinds.choose(rng).unwrap_or(&Kind::Random);
    (kind, one_case(kind, rng, t, id, stats).await)
}

async fn one_case(kind: Kind, rng: &mut StdRng, t: &Target, id: &str, stats: &Stats) -> String {
    let db = *t.dbs.choose(rng).unwrap_or(&"app");
    let Ok(mut c) = Raw::connect(t.port).await else {
        stats.bump(&stats.connect_failed);
        return format!("{id} {}: connect failed", kind.name());
    };
    match kind {
        Kind::Random => {
            let b = random_bytes(rng, 300);
            let desc = format!("{id} random {} bytes", b.len());
            c.send(&b).await;
            c.drain(Duration::from_millis(rng.gen_range(0..100))).await;
            desc
        }
        Kind::Startup => {
            let user = *["app", "admin", "nobody", ""].choose(rng).unwrap_or(&"app");
            let pkt = match rng.gen_range(0..4) {
                0 => vec![0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f], // SSLRequest
                1 => vec![0, 0, 0, 16, 4, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2], // Cancel
                _ => wire::startup_packet(&[("user", user), ("database", db)]),
            };
            let pkt = mutate(rng, pkt);
            let desc = format!("{id} startup {:?}", short(&pkt));
            c.send(&pkt).await;
            // Maybe follow with a second (valid) startup, as after an SSL refusal.
            if rng.gen_bool(0.3) {
                c.send(&wire::startup_packet(&[("user", "app"), ("database", db)]))
                    .await;
            }
            c.drain(Duration::from_millis(rng.gen_range(0..100))).await;
            desc
        }
        Kind::Scram => {
            let which = rng.gen_range(0..3); // 0 first, 1 final, 2 both
            let mut r1 = rng.clone();
            let mut r2 = rng.clone();
            let _: u64 = rng.gen(); // advance so later cases differ
            let mut m_first = |v: Vec<u8>| if which != 1 { mutate(&mut r1, v) } else { v };
            let mut m_final = |v: Vec<u8>| if which != 0 { mutate(&mut r2, v) } else { v };
            let wait = Duration::from_secs(1); // a mutated length can leave pgvane waiting for more
            let r = login(
                &mut c,
                "app",
                "app-secret",
                db,
                wait,
                &mut m_first,
                &mut m_final,
            )
            .await;
            let desc = format!("{id} scram mutate={which} db={db} -> {r:?}");
            if r == Login::Ok {
                // A mutation that still logs in must leave a usable session.
                stats.bump(&stats.scram_survived);
                check_marker(&mut c, id, 0, stats, &desc).await;
            }
            desc
        }
        Kind::Session => session(rng, &mut c, db, id, stats).await,
    }
}

fn short(b: &[u8]) -> String {
    let s: String = b.iter().take(48).map(|&x| format!("{x:02x}")).collect();
    if b.len() > 48 {
        format!("{s}..({} bytes)", b.len())
    } else {
        s
    }
}

/// Valid login, then 1..=4 rounds of a generated batch.
async fn session(rng: &mut StdRng, c: &mut Raw, db: &str, id: &str, stats: &Stats) -> String {
    let wait = Duration::from_secs(10);
    let r = login(c, "app", "app-secret", db, wait, &mut |v| v, &mut |v| v).await;
    if r != Login::Ok {
        stats.bump(&stats.login_failed);
        return format!("{id} session db={db}: login {r:?}");
    }
    let mut desc = format!("{id} session db={db}");
    // Once a malformed round was sent, framing may be out of step (a mutated length makes
    // the next bytes part of that message, as PostgreSQL would read them too): from then on
    // no answer is owed, so no marker is checked.
    let mut in_step = true;
    for round in 0..rng.gen_range(1..=4) {
        let (msgs, names) = batch(rng, db);
        let mut bytes: Vec<u8> = msgs.concat();
        let mode = rng.gen_range(0..10);
        let well_formed = mode < 5;
        let checked = well_formed && in_step;
        in_step &= well_formed;
        match mode {
            5 | 6 => {
                // Mutate one message.
                let i = rng.gen_range(0..msgs.len());
                let mut m = msgs.clone();
                m[i] = mutate(rng, m[i].clone());
                bytes = m.concat();
            }
            7 => bytes.truncate(rng.gen_range(0..bytes.len().max(1))), // cut mid-request
            8 => bytes.extend_from_slice(&[b'Q', 0x7f, 0xff, 0xff, 0xf0, b'S']), // huge length
            _ => {}
        }
        desc.push_str(&format!(" | r{round} mode={mode} [{}]", names.join(" ")));
        // Write in up to three pieces, sometimes with pauses between them.
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = rng.gen_range(1..=rest.len());
            if !c.send(&rest[..n]).await {
                return desc + " (write blocked)";
            }
            rest = &rest[n..];
            if rng.gen_bool(0.2) {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
            }
        }
        if checked {
            if !check_marker(c, id, round, stats, &desc).await {
                return desc;
            }
        } else if mode == 7 && rng.gen_bool(0.5) {
            return desc + " (disconnected mid-request)";
        } else if c.drain(Duration::from_millis(rng.gen_range(0..100))).await == ReadEnd::Closed {
            return desc + " (closed by pgvane)";
        }
        if rng.gen_bool(0.1) {
            return desc + " (disconnected after round)";
        }
    }
    if rng.gen_bool(0.5) {
        c.send(&wire::terminate()).await;
    }
    desc
}

/// After a well-formed batch: Sync, ROLLBACK (to leave any, possibly aborted, transaction),
/// then a marker query whose only right answer is its own marker. Another session's marker
/// is a wrong answer; an open connection that stops before its final ReadyForQuery for
/// 15 s is a hang. An error answer (e.g. in an aborted transaction) or a close is allowed.
/// Returns whether the session may go on.
async fn check_marker(c: &mut Raw, id: &str, round: usize, stats: &Stats, desc: &str) -> bool {
    let marker = format!("nfmark-{id}-{round}");
    let mut msg = wire::sync();
    msg.extend_from_slice(&wire::query("ROLLBACK"));
    msg.extend_from_slice(&wire::query(&format!("SELECT '{marker}'")));
    if !c.send(&msg).await {
        return false;
    }
    let mut last = 0u8;
    let mut quiet = Duration::ZERO;
    loop {
        let step = Duration::from_millis(500);
        match c.frame(step).await {
            Err(ReadEnd::Closed) => return false,
            // Ready and quiet for a second: answered (if only with an error or a refusal).
            Err(ReadEnd::Timeout) if last == b'Z' && quiet >= step => return true,
            Err(ReadEnd::Timeout) if quiet >= Duration::from_secs(15) && last != b'Z' => {
                stats.fail(
                    &stats.attacker_hang,
                    format!("no ReadyForQuery for 15 s after {:?}: {desc}", last as char),
                );
                return false;
            }
            Err(ReadEnd::Timeout) => quiet += step,
            Ok(f) => {
                quiet = Duration::ZERO;
                last = f.tag;
                if f.tag != b'D' {
                    continue;
                }
                let got = f.first_column().unwrap_or_default();
                if got.starts_with("nfmark-") && got != marker {
                    let what = format!("got {got:?} instead of {marker:?}: {desc}");
                    stats.fail(&stats.attacker_wrong, what);
                    return false;
                }
                if got == marker {
                    return c.until(b'Z', Duration::from_secs(15)).await.is_ok();
                }
            }
        }
    }
}

/// A batch of frontend messages (all well-formed) and their short names.
fn batch(rng: &mut StdRng, db: &str) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut msgs = Vec::new();
    let mut names = Vec::new();
    let stmt_names = ["", "", "s1", "s2", "nfs"];
    let sqls: &[&str] = if db == "shop" {
        &[
            "SELECT count(*) FROM orders",
            "SELECT amount FROM orders WHERE customer_id = $1",
            "INSERT INTO orders VALUES ($1, 1, 1)",
            "SELECT 1",
            "SELEC 1",
            "SELECT pg_sleep(0.05)",
        ]
    } else {
        &[
            "SELECT $1::int8",
            "SELECT generate_series(1, 50)",
            "SELECT pg_sleep(0.05)",
            "SELEC broken",
            "SELECT 1/0",
            "BEGIN",
            "COMMIT",
            "INSERT INTO nf_junk VALUES ($1)",
            "SET statement_timeout = '10s'",
            "LISTEN nf",
            "",
        ]
    };
    for _ in 0..rng.gen_range(1..=8) {
        let sql = *sqls.choose(rng).unwrap_or(&"SELECT 1");
        let stmt = *stmt_names.choose(rng).unwrap_or(&"");
        let portal = *["", "", "p1"].choose(rng).unwrap_or(&"");
        let v = rng.gen_range(-5i64..1_000_000).to_string();
        let (m, n): (Vec<u8>, String) = match rng.gen_range(0..16) {
            0..=2 => (wire::parse(stmt, sql, &[]), format!("P({stmt:?},{sql:?})")),
            3..=4 => {
                let params: Vec<Option<&str>> = if sql.contains('$') {
                    vec![Some(&v)]
                } else if rng.gen_bool(0.2) {
                    vec![None] // parameter count mismatch
                } else {
                    vec![]
                };
                (
                    wire::bind(portal, stmt, &params),
                    format!("B({portal:?},{stmt:?})"),
                )
            }
            5..=6 => {
                let max = *[0, 0, 1, 3].choose(rng).unwrap_or(&0);
                (wire::execute(portal, max), format!("E({portal:?},{max})"))
            }
            7 => {
                let kind = *[b'S', b'P'].choose(rng).unwrap_or(&b'S');
                let name = if rng.gen_bool(0.5) { "nope" } else { stmt };
                (
                    wire::target(b'D', kind, name),
                    format!("D({},{name:?})", kind as char),
                )
            }
            8 => {
                let kind = *[b'S', b'P'].choose(rng).unwrap_or(&b'S');
                (
                    wire::target(b'C', kind, stmt),
                    format!("C({},{stmt:?})", kind as char),
                )
            }
            9 => (wire::sync(), "S".into()),
            10 => (wire::flush(), "H".into()),
            11 => {
                let q = sql.replace("$1", &v);
                (wire::query(&q), format!("Q({q:?})"))
            }
            12 => {
                let q = *[
                    "",
                    ";",
                    "SELECT 1; SELECT 2",
                    "BEGIN; SELECT 1/0; COMMIT",
                    "ROLLBACK",
                ]
                .choose(rng)
                .unwrap_or(&"");
                (wire::query(q), format!("Q({q:?})"))
            }
            13 => {
                // COPY as a complete unit: statement, data, then done or fail.
                let mut m = wire::query("COPY nf_junk FROM STDIN");
                m.extend_from_slice(&wire::frame(b'd', format!("{v}\n").as_bytes()));
                if rng.gen_bool(0.5) {
                    m.extend_from_slice(&wire::frame(b'c', &[]));
                } else {
                    m.extend_from_slice(&wire::frame(b'f', b"netfuzz gave up\0"));
                }
                (m, "COPY-in".into())
            }
            14 => (
                wire::query("COPY (SELECT generate_series(1,20)) TO STDOUT"),
                "COPY-out".into(),
            ),
            _ => (wire::function_call(1317, "12"), "F(length)".into()), // length(text)
        };
        msgs.push(m);
        names.push(n);
    }
    (msgs, names)
}
