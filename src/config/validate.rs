//! Semantic validation of a parsed [`Config`]; every message starts with the key path.

use std::collections::HashSet;

use super::{
    check_socket_addr, AuthType, Backend, Config, Database, PasswordKind, User, SCRAM_PREFIX,
};

/// Returns every problem found, one message each (empty = valid).
pub(super) fn validate(c: &Config) -> Vec<String> {
    let mut errs = Vec::new();
    general(c, &mut errs);
    users(c, &mut errs);
    databases(c, &mut errs);
    errs
}

fn general(c: &Config, errs: &mut Vec<String>) {
    let g = &c.general;
    if let Err(e) = check_socket_addr(&g.listen_addr) {
        errs.push(format!("general.listen_addr: {e}"));
    }
    if let Some(addr) = &g.metrics_addr {
        if let Err(e) = check_socket_addr(addr) {
            errs.push(format!("general.metrics_addr: {e}"));
        }
    }
    if g.default_pool_size < 1 {
        errs.push("general.default_pool_size: must be at least 1".to_string());
    }
    if g.min_pool_size > g.default_pool_size {
        errs.push(format!(
            "general.min_pool_size: {} is larger than general.default_pool_size ({})",
            g.min_pool_size, g.default_pool_size
        ));
    }
    if g.max_client_conn < 1 {
        errs.push("general.max_client_conn: must be at least 1".to_string());
    }
    if g.max_buffered_bytes < g.max_message_size {
        errs.push(format!(
            "general.max_buffered_bytes: {} is smaller than general.max_message_size ({}): a message of the maximum size could never be read",
            g.max_buffered_bytes, g.max_message_size
        ));
    }
    if g.client_login_timeout.is_zero() {
        errs.push(
            "general.client_login_timeout: must be greater than 0 (a socket that never logs in \
             would hold a max_pending_logins slot forever)"
                .to_string(),
        );
    }
    if g.max_pending_logins < 1 {
        errs.push("general.max_pending_logins: must be at least 1".to_string());
    }
    if g.max_message_size < 1024 {
        errs.push(format!(
            "general.max_message_size: {} is too small, must be at least 1024",
            g.max_message_size
        ));
    }
    if g.admin_database.trim().is_empty() {
        errs.push("general.admin_database: must not be empty".to_string());
    }
    for (key, list) in [
        ("admin_users", &g.admin_users),
        ("stats_users", &g.stats_users),
    ] {
        for (i, name) in list.iter().enumerate() {
            if c.user(name).is_none() {
                errs.push(format!(
                    "general.{key}[{i}]: unknown user `{name}` (not listed in [[users]])"
                ));
            }
        }
    }
}

fn users(c: &Config, errs: &mut Vec<String>) {
    if c.users.is_empty() {
        errs.push("users: at least one [[users]] entry is required".to_string());
    }
    let auth = c.general.auth_type;
    let mut seen = HashSet::new();
    for (i, u) in c.users.iter().enumerate() {
        let at = format!("users[{i}]");
        if u.name.trim().is_empty() {
            errs.push(format!("{at}.name: must not be empty"));
        } else if !seen.insert(u.name.as_str()) {
            errs.push(format!("{at}.name: duplicate user `{}`", u.name));
        }
        if u.pool_size == Some(0) {
            errs.push(format!("{at}.pool_size: must be at least 1"));
        }
        password(u, auth, &at, errs);
    }
}

fn password(u: &User, auth: AuthType, at: &str, errs: &mut Vec<String>) {
    let Some(pw) = u.password.as_deref() else {
        if auth != AuthType::Trust {
            errs.push(format!(
                "{at}.password: required when general.auth_type is {auth}"
            ));
        }
        return;
    };
    if pw.is_empty() {
        errs.push(format!(
            "{at}.password: must not be empty (omit it with auth_type = \"trust\")"
        ));
        return;
    }
    match PasswordKind::classify(pw) {
        PasswordKind::Md5Hash(h) => {
            if !h[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
                errs.push(format!(
                    "{at}.password: md5 hash must be `md5` followed by 32 hex digits"
                ));
            } else if auth == AuthType::ScramSha256 {
                errs.push(format!(
                    "{at}.password: an md5 hash cannot be used with general.auth_type = \"scram-sha-256\" \
                     (use a plain password or a SCRAM-SHA-256 verifier)"
                ));
            }
        }
        PasswordKind::ScramVerifier(v) => {
            if let Err(e) = check_scram_verifier(&v) {
                errs.push(format!(
                    "{at}.password: malformed SCRAM-SHA-256 verifier: {e}"
                ));
            } else if auth == AuthType::Md5 {
                errs.push(format!(
                    "{at}.password: a SCRAM-SHA-256 verifier cannot be used with general.auth_type = \"md5\" \
                     (use a plain password or an md5 hash)"
                ));
            }
        }
        PasswordKind::Plain(_) => {}
    }
}

/// Shape check of `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
fn check_scram_verifier(v: &str) -> Result<(), String> {
    const SHAPE: &str = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";
    let rest = &v[SCRAM_PREFIX.len()..];
    let (iter_salt, keys) = rest.split_once('$').ok_or_else(|| SHAPE.to_string())?;
    let (iters, salt) = iter_salt.split_once(':').ok_or_else(|| SHAPE.to_string())?;
    let (stored, server) = keys.split_once(':').ok_or_else(|| SHAPE.to_string())?;
    match iters.parse::<u32>() {
        Ok(n) if n > 0 => {}
        _ => {
            return Err(format!(
                "iteration count `{iters}` is not a positive integer"
            ))
        }
    }
    let is_b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    };
    for (what, part) in [("salt", salt), ("StoredKey", stored), ("ServerKey", server)] {
        if !is_b64(part) {
            return Err(format!("{what} is empty or not base64; {SHAPE}"));
        }
    }
    Ok(())
}

fn databases(c: &Config, errs: &mut Vec<String>) {
    if c.databases.is_empty() {
        errs.push("databases: at least one [[databases]] entry is required".to_string());
    }
    let mut seen = HashSet::new();
    for (i, db) in c.databases.iter().enumerate() {
        let at = format!("databases[{i}]");
        if db.name.trim().is_empty() {
            errs.push(format!("{at}.name: must not be empty"));
        } else if db.name == c.general.admin_database {
            errs.push(format!(
                "{at}.name: `{}` is reserved for the admin console (general.admin_database)",
                db.name
            ));
        } else if !seen.insert(db.name.as_str()) {
            errs.push(format!("{at}.name: duplicate database `{}`", db.name));
        }
        if db.pool_size == Some(0) {
            errs.push(format!("{at}.pool_size: must be at least 1"));
        }
        database(db, &at, errs);
    }
}

fn database(db: &Database, at: &str, errs: &mut Vec<String>) {
    if db.shards.is_empty() {
        errs.push(format!("{at}.shards: at least one shard is required"));
    }
    for (s, shard) in db.shards.iter().enumerate() {
        backend(&shard.primary, &format!("{at}.shards[{s}].primary"), errs);
        for (r, rep) in shard.replicas.iter().enumerate() {
            backend(rep, &format!("{at}.shards[{s}].replicas[{r}]"), errs);
        }
    }
    if db.routing.lag_check_interval.is_zero() {
        errs.push(format!(
            "{at}.routing.lag_check_interval: must be greater than 0"
        ));
    }
    let mut tables = HashSet::new();
    for (t, st) in db.sharded_tables.iter().enumerate() {
        let tat = format!("{at}.sharded_tables[{t}]");
        if st.table.trim().is_empty() {
            errs.push(format!("{tat}.table: must not be empty"));
        } else if !tables.insert(st.table.to_ascii_lowercase()) {
            errs.push(format!("{tat}.table: table `{}` is listed twice", st.table));
        }
        if st.column.trim().is_empty() {
            errs.push(format!("{tat}.column: must not be empty"));
        }
    }
}

fn backend(b: &Backend, at: &str, errs: &mut Vec<String>) {
    if b.host.trim().is_empty() {
        errs.push(format!("{at}.host: must not be empty"));
    }
    if b.port == 0 {
        errs.push(format!("{at}.port: must not be 0"));
    }
    if b.weight < 1 {
        errs.push(format!("{at}.weight: must be at least 1"));
    }
    if b.dbname.as_deref().is_some_and(|d| d.trim().is_empty()) {
        errs.push(format!(
            "{at}.dbname: must not be empty (omit it to use the database name)"
        ));
    }
}
