//! pgvane configuration: the TOML file (`[general]`, `[[users]]`, `[[databases]]`).
//!
//! This module owns:
//! - the configuration types and their defaults (PgBouncer-style key names),
//! - parsing the TOML text (durations are strings such as `"250ms"`, `"5s"`, `"10m"`),
//! - validating it, with every error naming the key path (`databases[0].shards[1].primary.port`),
//! - describing it in human-readable form (`pgvane check`), never printing a password,
//! - lookup helpers (`user`, `database`, effective pool mode / size).
//!
//! It must not do any I/O beyond reading the config file in [`Config::load`]: no networking,
//! no DNS resolution, no logging, no global state. Reloading and applying a config belong to
//! the callers.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod toml_path;
mod validate;

#[cfg(test)]
mod tests;

/// Parses a duration such as `"250ms"`, `"5s"`, `"10m"`, `"1h"`, `"1h 30m"`, `"0"` or `"0s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration, expected e.g. `250ms`, `5s`, `10m`, `1h`".to_string());
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration `{s}` ({e}), expected e.g. `250ms`, `5s`, `10m`, `1h`")
    })
}

/// Formats a duration compactly (`250ms`, `5s`, `10m`, `0s`) for [`Config::describe`].
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_string()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// serde `deserialize_with` helper: a duration written as a string.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Defines a string-valued config enum with `as_str`, `Display`, `FromStr` (case-insensitive,
/// with aliases) and a `Deserialize` impl whose error lists the accepted values.
macro_rules! config_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every accepted canonical spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            /// The canonical config spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let lower = s.trim().to_ascii_lowercase();
                $(if lower == $s $(|| lower == $alias)* { return Ok(Self::$variant); })+
                Err(format!("unknown value `{s}`, expected {}", Self::NAMES.join(" | ")))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

config_enum! {
    /// How long a client keeps a server connection.
    PoolMode { Session = "session", Transaction = "transaction", Statement = "statement" }
}

config_enum! {
    /// How clients authenticate to pgvane.
    AuthType { ScramSha256 = "scram-sha-256" | "scram", Md5 = "md5", Plain = "plain", Trust = "trust" }
}

config_enum! {
    /// How reads are spread over the eligible replicas of a shard.
    LoadBalancing {
        RoundRobin = "round_robin" | "round-robin",
        Random = "random",
        LeastConnections = "least_connections" | "least-connections",
    }
}

config_enum! {
    /// Read-after-write consistency: `lsn` waits for / picks replicas that replayed the
    /// client's last commit LSN, `time` pins reads to the primary for a window, `off` disables.
    ReadAfterWrite { Lsn = "lsn", Time = "time", Off = "off" }
}

config_enum! {
    /// The Postgres type of a sharding key column (selects the PARTITION BY HASH function).
    ShardKeyType {
        Smallint = "smallint" | "int2",
        Integer = "integer" | "int4" | "int",
        Bigint = "bigint" | "int8",
        Text = "text",
        Varchar = "varchar" | "character varying",
        Uuid = "uuid",
    }
}

/// A configuration error; the message names the key path and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub general: General,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub databases: Vec<Database>,
}

/// `[general]`: process-wide settings and pool defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    pub listen_addr: String,
    pub pool_mode: PoolMode,
    pub auth_type: AuthType,
    /// Logged-in clients (sessions and admin console); sockets still logging in are counted
    /// apart, against `max_pending_logins`.
    pub max_client_conn: usize,
    /// How long a new socket may take to send its startup packet and authenticate.
    #[serde(deserialize_with = "de_duration")]
    pub client_login_timeout: Duration,
    /// Sockets that have not finished logging in; past it the oldest of them is closed to
    /// make room for the new one.
    pub max_pending_logins: usize,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    #[serde(deserialize_with = "de_duration")]
    pub reserve_pool_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub query_wait_timeout: Duration,
    /// 0 = off.
    #[serde(deserialize_with = "de_duration")]
    pub client_idle_timeout: Duration,
    /// 0 = off.
    #[serde(deserialize_with = "de_duration")]
    pub idle_transaction_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_idle_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_lifetime: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_login_retry: Duration,
    pub server_reset_query: String,
    /// Close, rather than reuse, a server connection in which a client loaded a library
    /// (PL/pgSQL, an extension) that the backend had not loaded when it started: a loaded
    /// library cannot be unloaded, and its reserved setting prefix and settings are visible
    /// to the next client. Session mode: one query per session end, off the client's path.
    /// Transaction mode: one query per transaction after the client has its answer; a
    /// client that loaded a library is pinned to that backend (closed instead of reused
    /// when `pin_session_state` is off).
    pub server_close_on_library_load: bool,
    #[serde(deserialize_with = "de_duration")]
    pub server_check_delay: Duration,
    /// Empty string = send an empty query.
    pub server_check_query: String,
    pub max_prepared_statements: usize,
    /// Transaction/statement mode: keep a client on its server while it holds state that
    /// cannot move (temporary tables, session advisory locks, WITH HOLD cursors, SQL
    /// PREPARE, LISTEN). False: PgBouncer's behaviour (such state is lost or seen by
    /// others; advisory locks are released when the server is handed on).
    pub pin_session_state: bool,
    /// Transaction/statement mode, databases without routing: an unnamed Parse (what most
    /// drivers send with the extended protocol) runs as the shared named statement of its
    /// text, so a server that already has it skips parse and analysis. PostgreSQL may then
    /// use a generic plan after five executions (`plan_cache_mode` applies), as for any
    /// named statement. Default false.
    pub cache_unnamed_statements: bool,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// 0 = one worker per CPU core.
    pub workers: usize,
    /// Frames larger than this are rejected with SQLSTATE 08P01.
    pub max_message_size: usize,
    /// All clients' large messages being read at once may hold at most this many bytes;
    /// beyond it a new large message waits (query_wait_timeout), then fails with 53200.
    pub max_buffered_bytes: usize,
    pub tcp_nodelay: bool,
    pub admin_database: String,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    pub metrics_addr: Option<String>,
    pub report_write_lsn: bool,
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: "127.0.0.1:6432".to_string(),
            pool_mode: PoolMode::Transaction,
            auth_type: AuthType::ScramSha256,
            max_client_conn: 10_000,
            client_login_timeout: Duration::from_secs(60),
            max_pending_logins: 1000,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            query_wait_timeout: Duration::from_secs(120),
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            server_connect_timeout: Duration::from_secs(5),
            server_login_retry: Duration::from_secs(1),
            server_reset_query: "DISCARD ALL".to_string(),
            server_close_on_library_load: false,
            server_check_delay: Duration::from_secs(30),
            server_check_query: "SELECT 1".to_string(),
            max_prepared_statements: 200,
            pin_session_state: true,
            cache_unnamed_statements: false,
            shutdown_timeout: Duration::from_secs(30),
            workers: 0,
            max_message_size: 256 * 1024 * 1024,
            max_buffered_bytes: 512 * 1024 * 1024,
            tcp_nodelay: true,
            admin_database: "pgvane".to_string(),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            metrics_addr: None,
            report_write_lsn: false,
        }
    }
}

/// `[[users]]`: a client login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Plain text, `md5` + 32 hex digits, or a SCRAM-SHA-256 verifier.
    #[serde(default)]
    pub password: Option<String>,
    /// User to log in to the servers as (default: `name`).
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password for the servers (default: `password`).
    #[serde(default)]
    pub server_password: Option<String>,
    #[serde(default)]
    pub pool_size: Option<usize>,
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    #[serde(default)]
    pub pin_session_state: Option<bool>,
    #[serde(default)]
    pub cache_unnamed_statements: Option<bool>,
}

/// What kind of secret a [`User::password`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordKind {
    Plain(String),
    /// `md5` followed by 32 hex digits (md5(password + username)).
    Md5Hash(String),
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    ScramVerifier(String),
}

impl PasswordKind {
    /// Classifies a password string by its shape (no validation).
    pub fn classify(p: &str) -> PasswordKind {
        if p.starts_with(SCRAM_PREFIX) {
            PasswordKind::ScramVerifier(p.to_string())
        } else if p.len() == 35 && p.starts_with("md5") {
            PasswordKind::Md5Hash(p.to_string())
        } else {
            PasswordKind::Plain(p.to_string())
        }
    }
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl User {
    pub fn password_kind(&self) -> Option<PasswordKind> {
        self.password.as_deref().map(PasswordKind::classify)
    }

    /// The user name to log in to servers as.
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }
}

/// `[[databases]]`: a logical database clients connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub name: String,
    #[serde(default)]
    pub pool_size: Option<usize>,
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    #[serde(default)]
    pub pin_session_state: Option<bool>,
    #[serde(default)]
    pub cache_unnamed_statements: Option<bool>,
    #[serde(default)]
    pub shards: Vec<Shard>,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub sharded_tables: Vec<ShardedTable>,
}

/// `[[databases.shards]]`: one primary and its replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub primary: Backend,
    #[serde(default)]
    pub replicas: Vec<Backend>,
}

/// One Postgres server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name on the server (default: the logical database name).
    #[serde(default)]
    pub dbname: Option<String>,
    /// Load-balancing weight among the replicas of a shard.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_port() -> u16 {
    5432
}

fn default_weight() -> u32 {
    1
}

impl Backend {
    /// The server-side database name, falling back to `db` (the logical database name).
    pub fn dbname_or<'a>(&'a self, db: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(db)
    }

    /// `"host:port"`.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port) // IPv6 literal
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `[databases.routing]`: read/write split, replica lag and read-after-write settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    pub read_write_split: bool,
    pub load_balancing: LoadBalancing,
    pub max_replica_lag_bytes: u64,
    #[serde(deserialize_with = "de_duration")]
    pub max_replica_lag: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub lag_check_interval: Duration,
    pub read_after_write: ReadAfterWrite,
    #[serde(deserialize_with = "de_duration")]
    pub read_after_write_window: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub read_after_write_wait: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub replica_ban_time: Duration,
    pub ban_after_errors: u32,
    /// Functions whose call makes a query a write (sent to the primary).
    pub write_functions: Vec<String>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            read_write_split: true,
            load_balancing: LoadBalancing::RoundRobin,
            max_replica_lag_bytes: 1_048_576,
            max_replica_lag: Duration::from_secs(5),
            lag_check_interval: Duration::from_millis(250),
            read_after_write: ReadAfterWrite::Lsn,
            read_after_write_window: Duration::from_secs(5),
            read_after_write_wait: Duration::ZERO,
            replica_ban_time: Duration::from_secs(30),
            ban_after_errors: 3,
            write_functions: Vec::new(),
        }
    }
}

/// `[[databases.sharded_tables]]`: a hash-sharded table and its key column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTable {
    pub table: String,
    pub column: String,
    pub r#type: ShardKeyType,
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("{}: cannot read config file: {e}", path.display()))
        })?;
        Config::from_toml(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses and validates TOML text.
    pub fn from_toml(s: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(s).map_err(|e| toml_path::toml_error(s, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the semantic rules (also useful for configs built in code). All problems are
    /// reported, one per line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors.join("\n")))
        }
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// Effective pool mode: user override > database override > `general.pool_mode`.
    pub fn pool_mode_for(&self, user: &User, db: &Database) -> PoolMode {
        user.pool_mode
            .or(db.pool_mode)
            .unwrap_or(self.general.pool_mode)
    }

    /// Whether session state pins a client to its server: user > database > general.
    pub fn pin_for(&self, user: &User, db: &Database) -> bool {
        user.pin_session_state
            .or(db.pin_session_state)
            .unwrap_or(self.general.pin_session_state)
    }

    /// `cache_unnamed_statements`: user override > database override > general.
    pub fn cache_unnamed_for(&self, user: &User, db: &Database) -> bool {
        user.cache_unnamed_statements
            .or(db.cache_unnamed_statements)
            .unwrap_or(self.general.cache_unnamed_statements)
    }

    /// Effective pool size: user override > database override > `general.default_pool_size`.
    pub fn pool_size_for(&self, user: &User, db: &Database) -> usize {
        user.pool_size
            .or(db.pool_size)
            .unwrap_or(self.general.default_pool_size)
    }

    /// Human-readable summary for `pgvane check`. Never includes passwords.
    pub fn describe(&self) -> String {
        use fmt::Write as _;
        let g = &self.general;
        let mut out = String::new();
        let _ = writeln!(out, "listen_addr: {}", g.listen_addr);
        let _ = writeln!(out, "pool_mode: {}", g.pool_mode);
        let _ = writeln!(out, "auth_type: {}", g.auth_type);
        let _ = writeln!(
            out,
            "max_client_conn: {}, default_pool_size: {}, min_pool_size: {}, reserve_pool_size: {}",
            g.max_client_conn, g.default_pool_size, g.min_pool_size, g.reserve_pool_size
        );
        let workers = if g.workers == 0 {
            "auto".to_string()
        } else {
            g.workers.to_string()
        };
        let _ = writeln!(out, "workers: {workers}");
        let _ = writeln!(out, "admin_database: {}", g.admin_database);
        let _ = writeln!(
            out,
            "metrics_addr: {}",
            g.metrics_addr.as_deref().unwrap_or("off")
        );
        let _ = writeln!(out, "users ({}):", self.users.len());
        for u in &self.users {
            let mut extra = Vec::new();
            if let Some(su) = &u.server_user {
                extra.push(format!("server_user={su}"));
            }
            if let Some(m) = u.pool_mode {
                extra.push(format!("pool_mode={m}"));
            }
            if let Some(n) = u.pool_size {
                extra.push(format!("pool_size={n}"));
            }
            if g.admin_users.contains(&u.name) {
                extra.push("admin".to_string());
            } else if g.stats_users.contains(&u.name) {
                extra.push("stats".to_string());
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" ({})", extra.join(", "))
            };
            let _ = writeln!(out, "  {}{extra}", u.name);
        }
        let _ = writeln!(out, "databases ({}):", self.databases.len());
        for db in &self.databases {
            let mode = db.pool_mode.unwrap_or(g.pool_mode);
            let size = db.pool_size.unwrap_or(g.default_pool_size);
            let r = &db.routing;
            let _ = writeln!(
                out,
                "  {}: pool_mode={mode} pool_size={size} shards={}",
                db.name,
                db.shards.len()
            );
            let _ = writeln!(
                out,
                "    routing: read_write_split={} load_balancing={} read_after_write={} max_replica_lag={} max_replica_lag_bytes={}",
                if r.read_write_split { "on" } else { "off" },
                r.load_balancing,
                r.read_after_write,
                format_duration(r.max_replica_lag),
                r.max_replica_lag_bytes
            );
            for (i, shard) in db.shards.iter().enumerate() {
                let p = &shard.primary;
                let _ = writeln!(
                    out,
                    "    shard {i}: primary {}/{}",
                    p.addr(),
                    p.dbname_or(&db.name)
                );
                for rep in &shard.replicas {
                    let _ = writeln!(
                        out,
                        "      replica {}/{} weight={}",
                        rep.addr(),
                        rep.dbname_or(&db.name),
                        rep.weight
                    );
                }
            }
            for t in &db.sharded_tables {
                let _ = writeln!(
                    out,
                    "    sharded table {} by {} ({})",
                    t.table, t.column, t.r#type
                );
            }
        }
        out
    }
}

/// Parses `s` as a socket address, for validation messages.
fn check_socket_addr(s: &str) -> Result<(), String> {
    s.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
        format!("`{s}` is not a valid socket address, expected e.g. 127.0.0.1:6432 or [::1]:6432")
    })
}
