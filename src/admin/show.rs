//! The SHOW tables. Where PgBouncer has the same command, the columns are PgBouncer's, in its
//! order and with its meanings; pgvane's own columns follow them.
//!
//! Pools: PgBouncer has one pool per (database, user); pgvane has one per (database, user,
//! backend), so SHOW POOLS has a row per backend. Clients belong to (database, user): their
//! `cl_active` count is on the row of shard 0's primary, `cl_waiting` on the pool they wait
//! for, so sums over rows stay right.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::app::{App, ClientInfo, CLIENT_WAITING};
use crate::metrics::backend_place;
use crate::pool::Pool;

use super::commands::{Show, CONTROL_HELP};
use super::settings;
use super::stats;

/// A result set: column names and text values (None = NULL).
#[derive(Debug, Default)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len(), "{:?}", self.columns);
        self.rows.push(row);
    }
}

fn v(x: impl ToString) -> Option<String> {
    Some(x.to_string())
}

fn b(x: bool) -> Option<String> {
    v(x as u8)
}

/// `2024-05-01 12:00:00 UTC` (PgBouncer's time format).
pub fn fmt_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let r = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        r / 3600,
        r % 3600 / 60,
        r % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn instant_to_system(t: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(Instant::now().saturating_duration_since(t))
        .unwrap_or(UNIX_EPOCH)
}

/// "host:port" / "[v6]:port" to (host, port).
fn split_addr(a: &str) -> (Option<String>, Option<String>) {
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return (v(sa.ip()), v(sa.port()));
    }
    match a.rsplit_once(':') {
        Some((h, p)) => (v(h.trim_matches(|c| c == '[' || c == ']')), v(p)),
        None => (v(a), None),
    }
}

fn ptr(id: u64) -> String {
    format!("{id:#x}")
}

pub fn show(app: &Arc<App>, what: Show) -> Table {
    match what {
        Show::Help => help(),
        Show::Version => {
            let mut t = Table::new(&["version"]);
            t.push(vec![v(format!("pgvane {}", env!("CARGO_PKG_VERSION")))]);
            t
        }
        Show::Config => config(app),
        Show::Databases => databases(app),
        Show::Users => users(app),
        Show::Pools => pools(app),
        Show::Clients => clients(app),
        Show::Servers => servers(app),
        Show::Stats => stats_table(app, true, true),
        Show::StatsTotals => stats_table(app, true, false),
        Show::StatsAverages => stats_table(app, false, true),
        Show::Lists => lists(app),
        Show::Replicas => replicas(app),
        Show::Shards => shards(app),
    }
}

fn help() -> Table {
    let mut t = Table::new(&["command", "description"]);
    for (_, k, d) in Show::ALL {
        t.push(vec![v(format!("SHOW {k}")), v(d)]);
    }
    for (c, d) in CONTROL_HELP {
        t.push(vec![v(c), v(d)]);
    }
    t
}

fn config(app: &App) -> Table {
    let cfg = app.config();
    let defaults = settings::entries(&crate::config::General::default());
    let mut t = Table::new(&["key", "value", "default", "changeable"]);
    for (k, val) in settings::entries(&cfg.general) {
        let def = defaults
            .iter()
            .find(|(d, _)| *d == k)
            .map(|(_, x)| x.clone());
        let changeable = if settings::CHANGEABLE.contains(&k) {
            "yes"
        } else {
            "no"
        };
        t.push(vec![v(k), v(val), def, v(changeable)]);
    }
    t
}

fn pools_of<'a>(pools: &'a [Arc<Pool>], db: &'a str) -> impl Iterator<Item = &'a Arc<Pool>> {
    pools.iter().filter(move |p| p.key.database == db)
}

fn databases(app: &App) -> Table {
    let cfg = app.config();
    let g = &cfg.general;
    let pools = app.all_pools();
    let clients = app.clients_snapshot();
    let mut t = Table::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "reserve_pool",
        "pool_mode",
        "max_connections",
        "current_connections",
        "paused",
        "disabled",
        // pgvane
        "shards",
        "replicas",
        "current_client_connections",
        "read_write_split",
    ]);
    let mut dbs: Vec<_> = cfg.databases.iter().collect();
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
    for db in dbs {
        let first = db.shards.first().map(|s| &s.primary);
        let open: usize = pools_of(&pools, &db.name).map(|p| p.open_count()).sum();
        let n_clients = clients.iter().filter(|c| c.database == db.name).count();
        t.push(vec![
            v(&db.name),
            first.and_then(|p| v(&p.host)),
            first.and_then(|p| v(p.port)),
            first.and_then(|p| v(p.dbname_or(&db.name))),
            None,
            v(db.pool_size.unwrap_or(g.default_pool_size)),
            v(g.min_pool_size),
            v(g.reserve_pool_size),
            v(db.pool_mode.unwrap_or(g.pool_mode)),
            v(0),
            v(open),
            b(app.admin.is_paused(&db.name)),
            b(app.is_disabled(&db.name)),
            v(db.shards.len()),
            v(db.shards.iter().map(|s| s.replicas.len()).sum::<usize>()),
            v(n_clients),
            b(db.routing.read_write_split),
        ]);
    }
    // The admin console's own database, as PgBouncer lists "pgbouncer".
    let (_, port) = split_addr(&g.listen_addr);
    t.push(vec![
        v(&g.admin_database),
        None,
        port,
        v(&g.admin_database),
        None,
        v(0),
        v(0),
        v(0),
        v("statement"),
        v(0),
        v(0),
        b(false),
        b(false),
        v(0),
        v(0),
        v(0),
        b(false),
    ]);
    t
}

fn users(app: &App) -> Table {
    let cfg = app.config();
    let pools = app.all_pools();
    let clients = app.clients_snapshot();
    let mut t = Table::new(&[
        "name",
        "pool_mode",
        // pgvane
        "pool_size",
        "server_user",
        "console",
        "current_connections",
        "current_client_connections",
    ]);
    for u in &cfg.users {
        let console = if cfg.general.admin_users.contains(&u.name) {
            v("admin")
        } else if cfg.general.stats_users.contains(&u.name) {
            v("stats")
        } else {
            None
        };
        let open: usize = pools
            .iter()
            .filter(|p| p.key.user == u.name)
            .map(|p| p.open_count())
            .sum();
        t.push(vec![
            v(&u.name),
            u.pool_mode.and_then(v),
            u.pool_size.and_then(v),
            v(u.server_user()),
            console,
            v(open),
            v(clients.iter().filter(|c| c.user == u.name).count()),
        ]);
    }
    t
}

/// Pools sorted for display: database, user, shard, primary first, backend.
fn sorted_pools(app: &App) -> Vec<(Arc<Pool>, usize, &'static str)> {
    let cfg = app.config();
    let mut v: Vec<_> = app
        .all_pools()
        .into_iter()
        .map(|p| {
            let (shard, role) = backend_place(&cfg, &p.key).unwrap_or((0, "unknown"));
            (p, shard, role)
        })
        .collect();
    v.sort_by(|a, b| {
        (
            &a.0.key.database,
            &a.0.key.user,
            a.1,
            a.2 != "primary",
            &a.0.key.host,
            a.0.key.port,
        )
            .cmp(&(
                &b.0.key.database,
                &b.0.key.user,
                b.1,
                b.2 != "primary",
                &b.0.key.host,
                b.0.key.port,
            ))
    });
    v
}

fn pools(app: &App) -> Table {
    let cfg = app.config();
    let clients = app.clients_snapshot();
    let mut t = Table::new(&[
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        // pgvane
        "backend",
        "shard",
        "role",
        "pool_size",
        "reserve_pool",
        "sv_total",
        "paused",
        "errors",
    ]);
    for (p, shard, role) in sorted_pools(app) {
        let k = &p.key;
        let s = p.settings();
        let home = shard == 0 && role == "primary";
        let cl_active = if home {
            clients
                .iter()
                .filter(|c| c.database == k.database && c.user == k.user)
                .filter(|c| c.state.load(Ordering::Relaxed) != CLIENT_WAITING)
                .count()
        } else {
            0
        };
        let wait = app.admin.max_wait_us(&p);
        let mode = match (cfg.user(&k.user), cfg.database(&k.database)) {
            (Some(u), Some(d)) => cfg.pool_mode_for(u, d).to_string(),
            _ => cfg.general.pool_mode.to_string(),
        };
        t.push(vec![
            v(&k.database),
            v(&k.user),
            v(cl_active),
            v(p.stats.waiting.load(Ordering::Relaxed)),
            v(0),
            v(0),
            v(p.stats.active.load(Ordering::Relaxed)),
            v(0),
            v(0),
            v(p.idle_count()),
            v(0),
            v(0),
            v(0),
            v(wait / 1_000_000),
            v(wait % 1_000_000),
            v(mode),
            v(format!("{}:{}", k.host, k.port)),
            v(shard),
            v(role),
            v(s.size),
            v(s.reserve_size),
            v(p.open_count()),
            b(p.is_paused()),
            v(p.stats.errors.load(Ordering::Relaxed)),
        ]);
    }
    t
}

const CONN_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    // pgvane
    "id",
    "backend",
    "pinned",
];

fn held_server(c: &ClientInfo) -> Option<crate::app::CancelTarget> {
    c.server.lock().ok().and_then(|s| s.clone())
}

fn clients(app: &App) -> Table {
    let cfg = app.config();
    let (local_addr, local_port) = split_addr(&cfg.general.listen_addr);
    let mut t = Table::new(CONN_COLUMNS);
    for c in app.clients_snapshot() {
        let (addr, port) = split_addr(&c.addr);
        let server = held_server(&c);
        let connected = fmt_time(c.connected_at);
        t.push(vec![
            v("C"),
            v(&c.user),
            v(&c.database),
            v(c.state_label()),
            addr,
            port,
            local_addr.clone(),
            local_port.clone(),
            v(&connected),
            v(&connected),
            v(0),
            v(0),
            b(c.killed.load(Ordering::Relaxed)),
            v(ptr(c.id)),
            server.as_ref().map(|s| ptr(s.pid as u32 as u64)),
            v(0),
            None,
            v(&c.application_name),
            v(c.id),
            server.map(|s| s.addr),
            c.pinned_reason().map(|r| r.to_string()),
        ]);
    }
    t
}

fn servers(app: &App) -> Table {
    let mut t = Table::new(CONN_COLUMNS);
    // Servers held by clients (their address and pid are in the client's cancel slot).
    for c in app.clients_snapshot() {
        let Some(s) = held_server(&c) else { continue };
        let (addr, port) = split_addr(&s.addr);
        t.push(vec![
            v("S"),
            v(&c.user),
            v(&c.database),
            v("active"),
            addr,
            port,
            None,
            None,
            None,
            None,
            v(0),
            v(0),
            v(0),
            v(ptr(s.pid as u32 as u64)),
            v(ptr(c.id)),
            v(s.pid),
            None,
            v(&c.application_name),
            v(s.pid),
            v(&s.addr),
            c.pinned_reason().map(|r| r.to_string()),
        ]);
    }
    for (p, _, _) in sorted_pools(app) {
        let k = &p.key;
        let backend = format!("{}:{}", k.host, k.port);
        for s in p.idle_servers() {
            t.push(vec![
                v("S"),
                v(&k.user),
                v(&k.database),
                v("idle"),
                v(&k.host),
                v(k.port),
                s.local_addr.map(|a| a.ip().to_string()),
                s.local_addr.map(|a| a.port().to_string()),
                v(fmt_time(instant_to_system(s.created))),
                v(fmt_time(instant_to_system(s.last_used))),
                v(0),
                v(0),
                v(0),
                v(ptr(s.pid as u32 as u64)),
                None,
                v(s.pid),
                None,
                None,
                v(s.pid),
                v(&backend),
                None,
            ]);
        }
    }
    t
}

fn stats_table(app: &App, totals: bool, averages: bool) -> Table {
    let mut cols: Vec<&'static str> = vec!["database"];
    if totals && averages {
        cols.extend([
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            // pgvane
            "total_server_assignment_count",
            "total_errors",
        ]);
    } else {
        cols.extend([
            "xact_count",
            "query_count",
            "bytes_received",
            "bytes_sent",
            "xact_time",
            "query_time",
            "wait_time",
        ]);
        if totals {
            cols.extend(["server_assignment_count", "errors"]);
        }
    }
    let mut t = Table::new(&cols);
    for (db, tot) in stats::totals_by_db(app) {
        let avg = app.admin.averages(&db);
        let mut row = vec![v(&db)];
        let tot_cols = [
            tot.xact_count,
            tot.query_count,
            tot.received,
            tot.sent,
            tot.xact_time,
            tot.query_time,
            tot.wait_time,
        ];
        let avg_cols = [
            avg.xact_count,
            avg.query_count,
            avg.recv,
            avg.sent,
            avg.xact_time,
            avg.query_time,
            avg.wait_time,
        ];
        if totals {
            row.extend(tot_cols.iter().map(v));
        }
        if averages {
            row.extend(avg_cols.iter().map(v));
        }
        if totals {
            row.extend([v(tot.assignments), v(tot.errors)]);
        }
        t.push(row);
    }
    t
}

fn lists(app: &App) -> Table {
    let cfg = app.config();
    let pools = app.all_pools();
    let registered = app.clients_snapshot().len();
    let open: usize = pools.iter().map(|p| p.open_count()).sum();
    let idle: usize = pools.iter().map(|p| p.idle_count()).sum();
    let mut t = Table::new(&["list", "items"]);
    for (name, n) in [
        ("databases", cfg.databases.len()),
        ("users", cfg.users.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", registered),
        ("login_clients", app.pending_login_count()),
        ("free_servers", 0),
        ("used_servers", open),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
        // pgvane
        ("idle_servers", idle),
        ("active_servers", open.saturating_sub(idle)),
    ] {
        t.push(vec![v(name), v(n)]);
    }
    t
}

fn replicas(app: &App) -> Table {
    let cfg = app.config();
    let runtimes = app.all_dbs();
    let mut t = Table::new(&[
        "database",
        "shard",
        "role",
        "host",
        "port",
        "state",
        "lag_bytes",
        "lag_seconds",
        "reads",
        // pgvane
        "in_recovery",
        "last_error",
    ]);
    let mut dbs: Vec<_> = cfg.databases.iter().collect();
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
    for db in dbs {
        let rt = runtimes.iter().find(|r| r.name == db.name);
        for (i, sh) in db.shards.iter().enumerate() {
            let state = rt
                .and_then(|r| r.shards.get(i))
                .filter(|s| s.state.replicas.len() == sh.replicas.len());
            let backends =
                std::iter::once(("primary", &sh.primary, state.map(|s| &s.state.primary))).chain(
                    sh.replicas
                        .iter()
                        .enumerate()
                        .map(|(j, r)| ("replica", r, state.and_then(|s| s.state.replicas.get(j)))),
                );
            for (role, be, st) in backends {
                let mut row = vec![v(&db.name), v(i), v(role), v(&be.host), v(be.port)];
                match (st, rt) {
                    (Some(st), Some(rt)) => {
                        let primary = role == "primary";
                        row.extend([
                            v(st.state_label(&rt.repl)),
                            v(if primary { 0 } else { st.lag_bytes() }),
                            if primary {
                                v("0.000")
                            } else if st.lag_known() {
                                v(format!("{:.3}", st.lag().as_secs_f64()))
                            } else {
                                None
                            },
                            v(st.reads()),
                            b(st.in_recovery()),
                            st.last_error(),
                        ]);
                    }
                    // No client has used the database yet: no monitor runs for it.
                    _ => row.extend([v("unknown"), None, None, v(0), None, None]),
                }
                t.push(row);
            }
        }
    }
    t
}

fn shards(app: &App) -> Table {
    let cfg = app.config();
    let pools = app.all_pools();
    let mut counts: BTreeMap<(String, usize), (u64, u64, u64)> = BTreeMap::new();
    for p in &pools {
        if let Some((shard, _)) = backend_place(&cfg, &p.key) {
            let e = counts.entry((p.key.database.clone(), shard)).or_default();
            e.0 += p.stats.query_count.load(Ordering::Relaxed);
            e.1 += p.stats.errors.load(Ordering::Relaxed);
            e.2 += p.stats.xact_count.load(Ordering::Relaxed);
        }
    }
    let mut t = Table::new(&[
        "database",
        "shard",
        "primary",
        "replicas",
        "queries",
        "errors",
        // pgvane
        "transactions",
    ]);
    let mut dbs: Vec<_> = cfg.databases.iter().collect();
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
    for db in dbs {
        for (i, sh) in db.shards.iter().enumerate() {
            let (q, e, x) = counts
                .get(&(db.name.clone(), i))
                .copied()
                .unwrap_or_default();
            let replicas: Vec<String> = sh.replicas.iter().map(|r| r.addr()).collect();
            t.push(vec![
                v(&db.name),
                v(i),
                v(sh.primary.addr()),
                v(replicas.join(",")),
                v(q),
                v(e),
                v(x),
            ]);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(fmt_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(fmt_time(t), "2024-02-29 12:34:56 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(fmt_time(t), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn addresses_split() {
        assert_eq!(
            split_addr("127.0.0.1:5432"),
            (Some("127.0.0.1".into()), Some("5432".into()))
        );
        assert_eq!(
            split_addr("[::1]:6432"),
            (Some("::1".into()), Some("6432".into()))
        );
        assert_eq!(
            split_addr("db.internal:5432"),
            (Some("db.internal".into()), Some("5432".into()))
        );
    }
}
