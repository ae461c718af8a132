//! `[general]` keys as the console shows them (SHOW CONFIG) and changes them (SET).
//!
//! SET changes the running configuration only (like PgBouncer): the next RELOAD or SIGHUP
//! re-reads the file. Every change goes through `Config::validate` and `App::reload`, so a SET
//! is exactly a reload with one key changed.

use std::time::Duration;

use crate::config::{format_duration, parse_duration, General, PoolMode};

use super::commands::AdminError;

/// Keys SET may change at run time. Pool sizes and server timeouts apply to existing pools at
/// once; client timeouts and pool_mode apply to sessions that log in afterwards.
pub const CHANGEABLE: &[&str] = &[
    "pool_mode",
    "max_client_conn",
    "client_login_timeout",
    "max_pending_logins",
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "query_wait_timeout",
    "client_idle_timeout",
    "idle_transaction_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "server_connect_timeout",
    "server_login_retry",
    "server_reset_query",
    "server_check_delay",
    "server_check_query",
    "max_prepared_statements",
    "shutdown_timeout",
];

/// Keys whose new value needs a restart (RELOAD keeps the running one and says so).
pub const RESTART_ONLY: &[&str] = &["listen_addr", "workers", "metrics_addr"];

fn d(v: Duration) -> String {
    format_duration(v)
}

/// (key, value) of every `[general]` key, in file order.
pub fn entries(g: &General) -> Vec<(&'static str, String)> {
    vec![
        ("listen_addr", g.listen_addr.clone()),
        ("pool_mode", g.pool_mode.to_string()),
        ("auth_type", g.auth_type.to_string()),
        ("max_client_conn", g.max_client_conn.to_string()),
        ("client_login_timeout", d(g.client_login_timeout)),
        ("max_pending_logins", g.max_pending_logins.to_string()),
        ("default_pool_size", g.default_pool_size.to_string()),
        ("min_pool_size", g.min_pool_size.to_string()),
        ("reserve_pool_size", g.reserve_pool_size.to_string()),
        ("reserve_pool_timeout", d(g.reserve_pool_timeout)),
        ("query_wait_timeout", d(g.query_wait_timeout)),
        ("client_idle_timeout", d(g.client_idle_timeout)),
        ("idle_transaction_timeout", d(g.idle_transaction_timeout)),
        ("server_idle_timeout", d(g.server_idle_timeout)),
        ("server_lifetime", d(g.server_lifetime)),
        ("server_connect_timeout", d(g.server_connect_timeout)),
        ("server_login_retry", d(g.server_login_retry)),
        ("server_reset_query", g.server_reset_query.clone()),
        (
            "server_close_on_library_load",
            g.server_close_on_library_load.to_string(),
        ),
        ("server_check_delay", d(g.server_check_delay)),
        ("server_check_query", g.server_check_query.clone()),
        (
            "max_prepared_statements",
            g.max_prepared_statements.to_string(),
        ),
        (
            "cache_unnamed_statements",
            g.cache_unnamed_statements.to_string(),
        ),
        ("shutdown_timeout", d(g.shutdown_timeout)),
        ("workers", g.workers.to_string()),
        ("max_message_size", g.max_message_size.to_string()),
        ("max_buffered_bytes", g.max_buffered_bytes.to_string()),
        ("tcp_nodelay", g.tcp_nodelay.to_string()),
        ("admin_database", g.admin_database.clone()),
        ("admin_users", g.admin_users.join(",")),
        ("stats_users", g.stats_users.join(",")),
        ("metrics_addr", g.metrics_addr.clone().unwrap_or_default()),
        ("report_write_lsn", g.report_write_lsn.to_string()),
    ]
}

fn bad(key: &str, value: &str, why: impl std::fmt::Display) -> AdminError {
    AdminError::new(
        "22023",
        format!("invalid value for {key}: \"{value}\": {why}"),
    )
}

fn count(key: &str, value: &str) -> Result<usize, AdminError> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| bad(key, value, "expected a non-negative integer"))
}

/// A duration: `"5s"`, `"250ms"`, or a bare number of seconds (PgBouncer's unit).
fn duration(key: &str, value: &str) -> Result<Duration, AdminError> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs >= 0.0 && secs.is_finite() {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    parse_duration(v).map_err(|e| bad(key, value, e))
}

/// Apply `key = value` to `g` (not yet validated as a whole).
pub fn set(g: &mut General, key: &str, value: &str) -> Result<(), AdminError> {
    if !CHANGEABLE.contains(&key) {
        return Err(if entries(g).iter().any(|(k, _)| *k == key) {
            AdminError::new(
                "55P02",
                format!(
                    "{key} cannot be changed with SET; edit the configuration file and RELOAD{}",
                    if RESTART_ONLY.contains(&key) {
                        " (this key needs a restart)"
                    } else {
                        ""
                    }
                ),
            )
        } else {
            AdminError::new(
                "42704",
                format!(
                    "unrecognized configuration parameter \"{key}\" (SHOW CONFIG lists them; changeable with SET: {})",
                    CHANGEABLE.join(", ")
                ),
            )
        });
    }
    match key {
        "pool_mode" => g.pool_mode = value.parse::<PoolMode>().map_err(|e| bad(key, value, e))?,
        "max_client_conn" => g.max_client_conn = count(key, value)?,
        "client_login_timeout" => g.client_login_timeout = duration(key, value)?,
        "max_pending_logins" => g.max_pending_logins = count(key, value)?,
        "default_pool_size" => g.default_pool_size = count(key, value)?,
        "min_pool_size" => g.min_pool_size = count(key, value)?,
        "reserve_pool_size" => g.reserve_pool_size = count(key, value)?,
        "max_prepared_statements" => g.max_prepared_statements = count(key, value)?,
        "reserve_pool_timeout" => g.reserve_pool_timeout = duration(key, value)?,
        "query_wait_timeout" => g.query_wait_timeout = duration(key, value)?,
        "client_idle_timeout" => g.client_idle_timeout = duration(key, value)?,
        "idle_transaction_timeout" => g.idle_transaction_timeout = duration(key, value)?,
        "server_idle_timeout" => g.server_idle_timeout = duration(key, value)?,
        "server_lifetime" => g.server_lifetime = duration(key, value)?,
        "server_connect_timeout" => g.server_connect_timeout = duration(key, value)?,
        "server_login_retry" => g.server_login_retry = duration(key, value)?,
        "server_check_delay" => g.server_check_delay = duration(key, value)?,
        "shutdown_timeout" => g.shutdown_timeout = duration(key, value)?,
        "server_reset_query" => g.server_reset_query = value.to_string(),
        "server_check_query" => g.server_check_query = value.to_string(),
        _ => unreachable!("every CHANGEABLE key is handled"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_values() {
        let mut g = General::default();
        set(&mut g, "default_pool_size", "33").unwrap();
        assert_eq!(g.default_pool_size, 33);
        set(&mut g, "query_wait_timeout", "60").unwrap();
        assert_eq!(g.query_wait_timeout, Duration::from_secs(60));
        set(&mut g, "query_wait_timeout", "250ms").unwrap();
        assert_eq!(g.query_wait_timeout, Duration::from_millis(250));
        set(&mut g, "pool_mode", "session").unwrap();
        assert_eq!(g.pool_mode, PoolMode::Session);
        assert_eq!(
            set(&mut g, "default_pool_size", "x").unwrap_err().code,
            "22023"
        );
        assert_eq!(
            set(&mut g, "listen_addr", "1.2.3.4:5").unwrap_err().code,
            "55P02"
        );
        assert_eq!(set(&mut g, "nope", "1").unwrap_err().code, "42704");
    }

    #[test]
    fn every_changeable_key_is_listed() {
        let g = General::default();
        let keys: Vec<&str> = entries(&g).iter().map(|(k, _)| *k).collect();
        for k in CHANGEABLE.iter().chain(RESTART_ONLY) {
            assert!(keys.contains(k), "{k}");
        }
    }
}
