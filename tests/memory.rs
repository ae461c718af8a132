//! Bounded memory: many clients sending large messages at once cannot grow pgvane beyond
//! `max_buffered_bytes` (plus a fixed overhead); the ones that do not fit fail with 53200.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::wire::{self, Wire};
use common::*;

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}

#[test]
fn eight_clients_sending_200_mb_messages_stay_under_the_cap() {
    let pg = shared();
    let cap_mib = 256usize;
    let p = Pgvane::start_fn(|port| {
        format!(
            r#"
[general]
listen_addr = "127.0.0.1:{port}"
auth_type = "trust"
default_pool_size = 2
query_wait_timeout = "3s"
max_buffered_bytes = {}

[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {}, dbname = "app" }}
"#,
            cap_mib * 1024 * 1024,
            pg.port()
        )
    });
    let pid = p.pid();
    let port = p.port();
    let start = rss_mib(pid);
    // Each client declares a 200 MB Query and sends half of it.
    let declared: usize = 200 * 1024 * 1024;
    let half = declared / 2;
    let mut clients: Vec<std::thread::JoinHandle<Wire>> = Vec::new();
    for _ in 0..8 {
        clients.push(std::thread::spawn(move || {
            let mut w = Wire::login(port, "app", "app");
            let mut head = vec![b'Q'];
            head.extend_from_slice(&((declared - 1) as u32).to_be_bytes());
            w.s.set_write_timeout(Some(Duration::from_secs(1))).ok();
            let _ = w.s.write_all(&head);
            let chunk = vec![b'x'; 1024 * 1024];
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sent = 0;
            while sent < half && Instant::now() < deadline {
                match w.s.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break, // pgvane is not reading this client (no room yet)
                }
            }
            w
        }));
    }
    let mut peak = start;
    let deadline = Instant::now() + Duration::from_secs(25);
    while Instant::now() < deadline && clients.iter().any(|c| !c.is_finished()) {
        peak = peak.max(rss_mib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut clients: Vec<Wire> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    for _ in 0..40 {
        peak = peak.max(rss_mib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Other clients are served meanwhile.
    let mut other = Wire::login(port, "app", "app");
    assert_eq!(other.simple("select 1"), ["1"]);
    // Clients that found no room were told so, with PostgreSQL's out-of-memory SQLSTATE.
    let mut refused = 0;
    for c in clients.iter_mut() {
        if let Some(m) = c.recv(Duration::from_secs(5)) {
            assert_eq!(m.tag, b'E', "{m:?}");
            assert_eq!(m.code().as_deref(), Some("53200"), "{m:?}");
            refused += 1;
        }
    }
    eprintln!("RSS start {start:.1} MiB, peak {peak:.1} MiB, refused {refused} of 8");
    assert!(
        peak < (cap_mib + 64) as f64,
        "RSS peaked at {peak:.1} MiB with max_buffered_bytes = {cap_mib} MiB"
    );
    assert!(
        refused >= 6,
        "at most one 200 MB message fits in 256 MiB: {refused}"
    );
    drop(clients);
    // Memory comes back once the clients are gone.
    let back = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        (rss_mib(pid) < start + 64.0).then_some(())
    });
    assert!(
        back.is_some(),
        "RSS {:.1} MiB after the clients left",
        rss_mib(pid)
    );
    let mut after = Wire::login(port, "app", "app");
    assert_eq!(after.simple("select 2"), ["2"]);
    let _ = after.s.write_all(&wire::terminate());
}
