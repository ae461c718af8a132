//! A client's startup settings (`options=-c ...`, DateStyle, TimeZone, ...) checked by a
//! server the first time they are seen, as PostgreSQL checks them at login.
//!
//! Owns: running the settings on a server once per distinct set (per database and user;
//! remembered afterwards, bounded), turning a refusal into the login's FATAL with the
//! server's SQLSTATE (42704 unknown setting, 22023 bad value, ...), and the values
//! PostgreSQL reports for them (ParameterStatus: `UTF8` for `utf8`, `ISO, DMY` for
//! `iso, dmy`), which the client is told instead of what it typed.
//!
//! Must not: keep the server: it goes back to its pool with the settings applied (its state
//! is known).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::params::{self, Params};
use crate::pool::Pool;

/// Distinct startup sets remembered (all are cheap; the map is cleared when full).
const REMEMBERED: usize = 1024;

type Key = (String, String, Params);
/// The values PostgreSQL shows for a set of startup settings, by lower-case name.
pub type Shown = Arc<Vec<(String, String)>>;
type Cache = Mutex<HashMap<Key, Shown>>;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Why a login is refused: SQLSTATE and message.
pub type Refusal = (&'static str, String);

/// A server's SQLSTATE as a `&'static str` (each distinct code is kept once: SQLSTATEs are
/// five characters from a fixed set PostgreSQL uses, so this stays small).
pub fn static_code(code: &str) -> &'static str {
    static CODES: OnceLock<Mutex<std::collections::HashSet<&'static str>>> = OnceLock::new();
    if code.len() != 5 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return "XX000";
    }
    let Ok(mut set) = CODES.get_or_init(Default::default).lock() else {
        return "XX000";
    };
    if let Some(c) = set.get(code) {
        return c;
    }
    let c: &'static str = Box::leak(code.to_string().into_boxed_str());
    set.insert(c);
    c
}

/// The values PostgreSQL shows for `startup`'s settings, by lower-case name (empty when
/// there is nothing to check), or the server's refusal.
pub async fn check(
    pool: &Arc<Pool>,
    database: &str,
    user: &str,
    startup: &Params,
) -> Result<Shown, Refusal> {
    if startup.is_empty() {
        return Ok(Arc::new(Vec::new()));
    }
    let key = (database.to_string(), user.to_string(), startup.clone());
    if let Some(hit) = cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(hit);
    }
    let mut conn = pool.get().await.map_err(|e| {
        let (code, msg) = e.sqlstate();
        (static_code(code), msg)
    })?;
    // From whatever state this server is in to exactly the startup settings, then the
    // values as PostgreSQL shows (and reports) them, in the same implicit transaction.
    let mut sql = params::sync_sql(startup, &conn.params).unwrap_or_default();
    let names: Vec<String> = startup
        .iter()
        .map(|(k, _)| crate::protocol::quote_literal(k))
        .collect();
    sql.push_str(&format!(
        "SELECT k, pg_catalog.current_setting(k) FROM pg_catalog.unnest(ARRAY[{}]::text[]) k",
        names.join(",")
    ));
    let (rows, err) = match conn.query_pairs(&sql).await {
        Ok(r) if !conn.broken => r,
        _ => {
            return Err((
                "08006",
                "server connection failed while checking startup settings".into(),
            ))
        }
    };
    if let Some(e) = err {
        // Its state is unchanged (one implicit transaction); it can serve others.
        pool.put(conn);
        return Err((static_code(&e.code), e.message));
    }
    let reported: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    conn.params = startup.clone();
    pool.put(conn);
    let reported = Arc::new(reported);
    if let Ok(mut c) = cache().lock() {
        if c.len() >= REMEMBERED {
            c.clear();
        }
        c.insert(key, reported.clone());
    }
    Ok(reported)
}
