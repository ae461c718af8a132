//! Operating pgvane: the Prometheus endpoint (/metrics, /healthz, /readyz), SIGHUP reloads
//! under load, zero-downtime restart beside a draining process, and the docker/ files
//! (compose, Prometheus, Grafana, pgvane.toml) being valid and naming real metrics.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn config(listen: u16, metrics: Option<u16>, general: &str, databases: &str) -> String {
    let metrics = metrics
        .map(|m| format!("metrics_addr = \"127.0.0.1:{m}\""))
        .unwrap_or_default();
    format!(
        r#"
[general]
listen_addr = "127.0.0.1:{listen}"
{metrics}
shutdown_timeout = "5s"
{general}

[[users]]
name = "app"
password = "app-secret"

{databases}
"#
    )
}

fn database(name: &str, pg_port: u16, replica: Option<u16>) -> String {
    let replicas = replica
        .map(|r| format!("replicas = [{{ host = \"127.0.0.1\", port = {r}, dbname = \"app\" }}]"))
        .unwrap_or_default();
    format!(
        r#"
[[databases]]
name = "{name}"
  [[databases.shards]]
  primary = {{ host = "127.0.0.1", port = {pg_port}, dbname = "app" }}
  {replicas}
"#
    )
}

fn url(port: u16, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user=app password={APP_PASSWORD} dbname={db} connect_timeout=10"
    )
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect to metrics port {port}: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked body"
    );
    (status, body.to_string())
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict-enough parser of the Prometheus text exposition format (0.0.4): every sample
/// belongs to a family declared by `# TYPE` (histograms: `_bucket`, `_sum`, `_count`), names
/// and labels are well-formed, values parse. Returns (family → type, samples).
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for (ln, line) in text.lines().enumerate() {
        let ln = ln + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(t)) => {
                    assert!(valid_name(name), "line {ln}: bad name {name}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "line {ln}: bad type {t}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "line {ln}: duplicate TYPE {name}"
                    );
                }
                (Some("HELP"), Some(name), _) => assert!(valid_name(name), "line {ln}"),
                _ => {}
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("line {ln}: {line}"));
        let value: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {ln}: bad value {v}")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels.to_string(), BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("line {ln}: {line}"));
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                loop {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    if key.is_empty() {
                        break;
                    }
                    assert!(valid_name(&key), "line {ln}: bad label {key}");
                    assert_eq!(chars.next(), Some('"'), "line {ln}: {line}");
                    let mut v = String::new();
                    loop {
                        match chars.next() {
                            Some('\\') => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(c) => v.push(c),
                                None => panic!("line {ln}: dangling escape"),
                            },
                            Some('"') => break,
                            Some(c) => v.push(c),
                            None => panic!("line {ln}: unterminated label value"),
                        }
                    }
                    labels.insert(key, v);
                    match chars.next() {
                        Some(',') => continue,
                        None => break,
                        Some(c) => panic!("line {ln}: unexpected {c:?}"),
                    }
                }
                (n.to_string(), labels)
            }
        };
        assert!(valid_name(&name), "line {ln}: bad name {name}");
        let family = family_of(&name, &types);
        assert!(
            family.is_some(),
            "line {ln}: sample {name} without a # TYPE"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    (types, samples)
}

/// The declared family a sample or a referenced series name belongs to.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return Some(base.to_string());
            }
        }
    }
    None
}

fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Every family the issue names, plus the operational ones.
const FAMILIES: &[(&str, &str)] = &[
    ("pgvane_info", "gauge"),
    ("pgvane_client_connections", "gauge"),
    ("pgvane_client_sockets", "gauge"),
    ("pgvane_pinned_clients", "gauge"),
    ("pgvane_server_connections", "gauge"),
    ("pgvane_pool_size", "gauge"),
    ("pgvane_pool_waiting_clients", "gauge"),
    ("pgvane_pool_max_wait_seconds", "gauge"),
    ("pgvane_pool_wait_duration_seconds", "histogram"),
    ("pgvane_transaction_duration_seconds", "histogram"),
    ("pgvane_transactions_total", "counter"),
    ("pgvane_queries_total", "counter"),
    ("pgvane_received_bytes_total", "counter"),
    ("pgvane_sent_bytes_total", "counter"),
    ("pgvane_pool_wait_time_seconds_total", "counter"),
    ("pgvane_server_assignments_total", "counter"),
    ("pgvane_routed_total", "counter"),
    ("pgvane_errors_total", "counter"),
    ("pgvane_backend_up", "gauge"),
    ("pgvane_replica_lag_bytes", "gauge"),
    ("pgvane_replica_lag_seconds", "gauge"),
    ("pgvane_replica_state", "gauge"),
    ("pgvane_replica_reads_total", "counter"),
    ("pgvane_parse_cache_hits_total", "counter"),
    ("pgvane_parse_cache_misses_total", "counter"),
    ("pgvane_prepared_cache_hits_total", "counter"),
    ("pgvane_prepared_cache_evictions_total", "counter"),
    ("pgvane_config_reloads_total", "counter"),
];

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Metric names (`pgvane_...`) referenced in a file.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pgvane_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not part of a longer identifier (e.g. a dashboard uid).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_and_health() {
    let pg = shared();
    let replica = shared_replica();
    let mport = free_port();
    let dbs = database("app", pg.port(), None) + &database("ro", pg.port(), Some(replica.port()));
    let p = Pgvane::start_fn(|l| config(l, Some(mport), "", &dbs));

    let (st, body) = http_get(mport, "/healthz");
    assert_eq!(st, 200, "{body}");
    // Readiness is set just after the client port is bound; a probe polls it, and so does
    // this test (the harness returns as soon as the port accepts).
    let mut ready = http_get(mport, "/readyz");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready.0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        ready = http_get(mport, "/readyz");
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    let (st, _) = http_get(mport, "/nope");
    assert_eq!(st, 404);

    let c = connect(&url(p.port(), "app")).await;
    c.simple_query("SELECT 1").await.unwrap();
    let ro = connect(&url(p.port(), "ro")).await;
    // Reads go to the replica once the monitor has seen it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        ro.simple_query("SELECT 1").await.unwrap();
        let (_, text) = http_get(mport, "/metrics");
        let (_, s) = parse_prometheus(&text);
        if sum(&s, "pgvane_replica_reads_total", &[("database", "ro")]) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no read reached the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An error, so the errors family has a sample.
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42601");
    // Prepared statements (extended protocol) for the prepared cache counters.
    for _ in 0..3 {
        c.query("SELECT $1::int", &[&1i32]).await.unwrap();
    }

    let (st, before) = http_get(mport, "/metrics");
    assert_eq!(st, 200);
    let (types, s0) = parse_prometheus(&before);
    let missing: Vec<&str> = FAMILIES
        .iter()
        .filter(|(family, t)| {
            types.get(*family).map(String::as_str) != Some(*t)
                || !s0
                    .iter()
                    .any(|s| family_of(&s.name, &types).as_deref() == Some(*family))
        })
        .map(|(f, _)| *f)
        .collect();
    assert!(
        missing.is_empty(),
        "families missing, mistyped or without samples: {missing:?}\n{before}"
    );
    assert!(
        sum(
            &s0,
            "pgvane_errors_total",
            &[("database", "app"), ("class", "42")]
        ) >= 1.0,
        "errors by SQLSTATE class"
    );
    assert_eq!(
        sum(
            &s0,
            "pgvane_replica_state",
            &[("database", "ro"), ("state", "ok")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &s0,
            "pgvane_backend_up",
            &[("database", "app"), ("role", "primary")]
        ),
        1.0
    );
    assert!(
        sum(
            &s0,
            "pgvane_parse_cache_misses_total",
            &[("database", "ro")]
        ) >= 1.0
    );
    assert_eq!(
        sum(
            &s0,
            "pgvane_pool_size",
            &[("database", "app"), ("user", "app")]
        ),
        20.0
    );
    assert_eq!(
        sum(
            &s0,
            "pgvane_client_connections",
            &[("database", "app"), ("state", "idle")]
        ),
        1.0
    );

    // Counters move when queries run.
    for _ in 0..20 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let (_, after) = http_get(mport, "/metrics");
    let (_, s1) = parse_prometheus(&after);
    let app = [("database", "app")];
    for name in [
        "pgvane_transactions_total",
        "pgvane_queries_total",
        "pgvane_received_bytes_total",
        "pgvane_sent_bytes_total",
        "pgvane_server_assignments_total",
        "pgvane_transaction_duration_seconds_count",
    ] {
        let (b, a) = (sum(&s0, name, &app), sum(&s1, name, &app));
        assert!(
            a >= b + 20.0 || (name.contains("bytes") && a > b),
            "{name}: {b} -> {a}"
        );
    }
    assert!(
        sum(
            &s1,
            "pgvane_routed_total",
            &[("database", "ro"), ("route", "replica")]
        ) >= 1.0
    );

    // The alert rules and the dashboard name only metrics pgvane exports.
    for file in [
        "docker/prometheus/alerts.yml",
        "docker/grafana/dashboards/pgvane.json",
    ] {
        let refs = referenced_metrics(&repo_file(file));
        assert!(refs.len() > 5, "{file}: {refs:?}");
        for r in refs {
            assert!(
                family_of(&r, &types).is_some(),
                "{file} uses {r}, which /metrics does not have"
            );
        }
    }

    // Readiness: a database whose primary is unreachable makes pgvane not ready.
    let dead = free_port();
    let dbs = database("app", pg.port(), None) + &database("gone", dead, None);
    let mport2 = free_port();
    let p2 = Pgvane::start_fn(|l| config(l, Some(mport2), "", &dbs));
    let (st, body) = http_get(mport2, "/readyz");
    assert_eq!(st, 503, "{body}");
    assert!(
        body.contains("gone") && body.contains("unreachable"),
        "{body}"
    );
    assert_eq!(http_get(mport2, "/healthz").0, 200);
    drop(p2);
    drop(p);
}

async fn pool_size_via_metrics(mport: u16, db: &str) -> f64 {
    let (_, text) = tokio::task::spawn_blocking(move || http_get(mport, "/metrics"))
        .await
        .unwrap();
    let (_, s) = parse_prometheus(&text);
    sum(&s, "pgvane_pool_size", &[("database", db), ("user", "app")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load() {
    let pg = shared();
    let mport = free_port();
    let make = |l: u16, pool: usize, extra: &str| {
        config(
            l,
            Some(mport),
            &format!("default_pool_size = {pool}"),
            &(database("app", pg.port(), None) + extra),
        )
    };
    let p = Pgvane::start_fn(|l| make(l, 5, ""));
    let port = p.port();

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let stop = stop.clone();
            let u = url(port, "app");
            tokio::spawn(async move {
                let c = try_connect(&u).await.map_err(|e| format!("connect: {e}"))?;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.simple_query("SELECT 1")
                        .await
                        .map_err(|e| format!("query: {e}"))?;
                    n += 1;
                }
                Ok::<u64, String>(n)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pool_size_via_metrics(mport, "app").await, 5.0);

    // Grow the pool and add a database.
    std::fs::write(
        p.config_path(),
        make(port, 9, &database("app2", pg.port(), None)),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool_size_via_metrics(mport, "app").await != 9.0 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c2 = connect(&url(port, "app2")).await;
    c2.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Shrink it again while the clients run.
    std::fs::write(
        p.config_path(),
        make(port, 3, &database("app2", pg.port(), None)),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool_size_via_metrics(mport, "app").await != 3.0 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An invalid file: logged at error level, the running configuration stays.
    std::fs::write(
        p.config_path(),
        make(port, 3, "").replace("[general]", "[general]\nno_such_key = 1"),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log().contains("no_such_key") {
        assert!(
            Instant::now() < deadline,
            "rejected reload not logged\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.log().contains("ERROR"), "{}", p.log());
    c2.simple_query("SELECT 1")
        .await
        .expect("app2 still served after a bad reload");
    assert_eq!(pool_size_via_metrics(mport, "app").await, 3.0);
    let (_, text) = tokio::task::spawn_blocking(move || http_get(mport, "/metrics"))
        .await
        .unwrap();
    let (_, s) = parse_prometheus(&text);
    assert_eq!(sum(&s, "pgvane_config_last_reload_successful", &[]), 0.0);
    assert!(sum(&s, "pgvane_config_reloads_total", &[("result", "applied")]) >= 2.0);

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client error during reloads: {e}"));
    }
    assert!(total > 100, "load ran ({total} queries)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_beside_a_draining_process() {
    let pg = shared();
    let mut old = Pgvane::start_fn(|l| config(l, None, "", &database("app", pg.port(), None)));
    let port = old.port();
    let cfg = config(port, None, "", &database("app", pg.port(), None));
    // The new process binds the same address (SO_REUSEPORT) while the old one runs.
    let new = Pgvane::spawn(&cfg);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !new.log().contains("pgvane listening") {
        assert!(
            Instant::now() < deadline,
            "new pgvane did not listen:\n{}",
            new.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let c = connect(&url(port, "app")).await;
    c.simple_query("SELECT 1").await.unwrap();
    old.signal(libc::SIGTERM);
    drop(c);
    let st = tokio::task::spawn_blocking(move || {
        let st = old.wait_exit(Duration::from_secs(15));
        (st, old)
    })
    .await
    .unwrap();
    let status =
        st.0.unwrap_or_else(|| panic!("old pgvane did not exit\n{}", st.1.log()));
    assert!(status.success(), "{status}");
    // Every new connection reaches the new process.
    for _ in 0..10 {
        let c = connect(&url(port, "app")).await;
        c.simple_query("SELECT 1").await.unwrap();
    }
    drop(new);
}

#[test]
fn docker_files_are_valid() {
    let compose: serde_yaml::Value = serde_yaml::from_str(&repo_file("docker/docker-compose.yml"))
        .expect("docker-compose.yml parses");
    let services = compose["services"].as_mapping().expect("services");
    for s in [
        "primary",
        "replica1",
        "replica2",
        "shard0",
        "shard1",
        "pgvane",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "service {s}");
    }
    assert_eq!(
        compose["services"]["pgvane"]["build"]["dockerfile"].as_str(),
        Some("docker/Dockerfile")
    );
    let image = |svc: &str| {
        compose["services"][svc]["image"]
            .as_str()
            .map(str::to_string)
    };
    for pgsvc in ["primary", "replica1", "replica2", "shard0", "shard1"] {
        // Merge keys (<<: *postgres) resolve in compose; serde_yaml keeps them as "<<".
        let own = image(pgsvc);
        let merged = compose["services"][pgsvc]["<<"]["image"]
            .as_str()
            .map(str::to_string);
        let img = own
            .or(merged)
            .or_else(|| compose["x-postgres"]["image"].as_str().map(str::to_string));
        assert_eq!(img.as_deref(), Some("postgres:15"), "{pgsvc}");
    }
    // Every file the compose file mounts exists.
    let docker = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker");
    let text = repo_file("docker/docker-compose.yml");
    for line in text.lines() {
        let l = line.trim().trim_start_matches("- ");
        if let Some(src) = l.strip_prefix("./") {
            let src = src.split(':').next().unwrap();
            assert!(
                docker.join(src).exists(),
                "mounted file docker/{src} missing"
            );
        }
    }
    let replica = repo_file("docker/postgres/replica-entrypoint.sh");
    assert!(
        replica.contains("pg_basebackup") && replica.contains(" -R"),
        "replicas via pg_basebackup -R"
    );

    let prom: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docker/prometheus/prometheus.yml"))
            .expect("prometheus.yml");
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("pgvane:9930")
    );
    assert!(prom["rule_files"][0]
        .as_str()
        .unwrap()
        .ends_with("alerts.yml"));
    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docker/prometheus/alerts.yml")).expect("alerts.yml");
    let rules = alerts["groups"][0]["rules"].as_sequence().expect("rules");
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for want in [
        "PgvaneReplicaLagHigh",
        "PgvanePoolSaturated",
        "PgvaneWaitTimeHigh",
        "PgvaneErrorRateHigh",
    ] {
        assert!(names.contains(&want), "alert {want} in {names:?}");
    }
    for r in rules {
        assert!(
            r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "{r:?}"
        );
    }
    for f in [
        "docker/grafana/provisioning/datasources/prometheus.yml",
        "docker/grafana/provisioning/dashboards/pgvane.yml",
    ] {
        let v: serde_yaml::Value =
            serde_yaml::from_str(&repo_file(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(v["apiVersion"].as_u64(), Some(1), "{f}");
    }
    // JSON is YAML: the dashboard parses and has panels with queries.
    let dash: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("docker/grafana/dashboards/pgvane.json"))
            .expect("dashboard JSON");
    assert_eq!(dash["uid"].as_str(), Some("pgvane"));
    let panels = dash["panels"].as_sequence().unwrap();
    assert!(
        panels
            .iter()
            .filter(|p| p["targets"][0]["expr"].as_str().is_some())
            .count()
            >= 15
    );

    let docker_file = repo_file("docker/Dockerfile");
    assert!(docker_file.contains("FROM rust:1-bookworm AS build"));
    assert!(docker_file.contains("FROM debian:bookworm-slim"));

    // The config the stack mounts passes `pgvane check`.
    let out = std::process::Command::new(pgvane_bin())
        .args(["check", "--config"])
        .arg(docker.join("pgvane.toml"))
        .output()
        .expect("run pgvane check");
    assert!(
        out.status.success(),
        "pgvane check docker/pgvane.toml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(
        described.contains("metrics_addr: 0.0.0.0:9930"),
        "{described}"
    );
}
