//! Parsing admin console statements (PgBouncer's console language): `SHOW x`, `PAUSE [db]`,
//! `RESUME [db]`, `DISABLE db`, `ENABLE db`, `KILL [db]`, `KILL_CLIENT id`, `RECONNECT [db]`,
//! `RELOAD`, `SHUTDOWN`, `SET key = value`. Keywords are case-insensitive; a trailing `;` is
//! accepted; names may be double-quoted.

/// What a SHOW command lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Help,
    Version,
    Config,
    Databases,
    Users,
    Pools,
    Clients,
    Servers,
    Stats,
    StatsTotals,
    StatsAverages,
    Lists,
    Replicas,
    Shards,
}

impl Show {
    /// (keyword, description) of every SHOW, in SHOW HELP order.
    pub const ALL: &'static [(Show, &'static str, &'static str)] = &[
        (Show::Help, "HELP", "this list"),
        (Show::Version, "VERSION", "pgvane version"),
        (
            Show::Config,
            "CONFIG",
            "[general] settings: value, default, changeable with SET",
        ),
        (
            Show::Databases,
            "DATABASES",
            "databases: first primary, pool settings, paused/disabled",
        ),
        (Show::Users, "USERS", "users and their pool mode"),
        (
            Show::Pools,
            "POOLS",
            "one row per pool (user, database, backend): clients and servers",
        ),
        (Show::Clients, "CLIENTS", "logged-in clients"),
        (Show::Servers, "SERVERS", "server connections"),
        (
            Show::Stats,
            "STATS",
            "per-database totals and averages (last 15 s period)",
        ),
        (Show::StatsTotals, "STATS_TOTALS", "per-database totals"),
        (
            Show::StatsAverages,
            "STATS_AVERAGES",
            "per-database averages (last 15 s period)",
        ),
        (
            Show::Lists,
            "LISTS",
            "counts of databases, users, pools, clients, servers",
        ),
        (
            Show::Replicas,
            "REPLICAS",
            "primaries and replicas: state, lag, reads",
        ),
        (
            Show::Shards,
            "SHARDS",
            "shards: primary, replicas, queries, errors",
        ),
    ];

    fn parse(word: &str) -> Option<Show> {
        Show::ALL
            .iter()
            .find(|(_, k, _)| k.eq_ignore_ascii_case(word))
            .map(|(s, _, _)| *s)
    }
}

/// Commands other than SHOW, for SHOW HELP.
pub const CONTROL_HELP: &[(&str, &str)] = &[
    ("PAUSE [db]", "hold new queries (all databases, or db) and wait until active server connections are released"),
    ("RESUME [db]", "undo PAUSE"),
    ("DISABLE db", "refuse new client logins to db"),
    ("ENABLE db", "undo DISABLE"),
    ("KILL [db]", "disconnect the clients of db (or of every database) and close its idle servers"),
    ("KILL_CLIENT id", "disconnect one client (id from SHOW CLIENTS)"),
    ("RECONNECT [db]", "close server connections of db (or all) as they become idle"),
    ("RELOAD", "re-read the configuration file and apply it without dropping clients"),
    ("SET key = value", "change a [general] setting at run time (SHOW CONFIG: changeable)"),
    ("SHUTDOWN", "stop accepting clients, drain as on SIGTERM, exit"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Pause(Option<String>),
    Resume(Option<String>),
    Disable(String),
    Enable(String),
    Kill(Option<String>),
    KillClient(u64),
    Reconnect(Option<String>),
    Reload,
    Shutdown,
    Set { key: String, value: String },
}

impl Command {
    /// Allowed for stats users (read-only console users).
    pub fn read_only(&self) -> bool {
        matches!(self, Command::Show(_))
    }
}

/// A statement the console cannot run: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn new(code: &'static str, message: impl Into<String>) -> AdminError {
        AdminError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word (keyword, name or number), as written.
    Word(String),
    /// A "quoted identifier" (case kept).
    Quoted(String),
    /// A 'string literal'.
    Literal(String),
    Equals,
}

fn syntax(msg: impl Into<String>) -> AdminError {
    AdminError::new("42601", msg)
}

fn tokenize(s: &str) -> Result<Vec<Token>, AdminError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            out.push(Token::Equals);
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some(x) if x == c => {
                        if chars.peek() == Some(&c) {
                            chars.next();
                            v.push(c);
                        } else {
                            break;
                        }
                    }
                    Some(x) => v.push(x),
                    None => return Err(syntax(format!("unterminated {c}quoted{c} text"))),
                }
            }
            out.push(if c == '"' {
                Token::Quoted(v)
            } else {
                Token::Literal(v)
            });
        } else {
            let mut v = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() || x == '=' || x == '"' || x == '\'' {
                    break;
                }
                v.push(x);
                chars.next();
            }
            out.push(Token::Word(v));
        }
    }
    Ok(out)
}

/// Split a simple-query string into statements at `;` outside quotes (empty ones dropped).
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == ';' => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
                continue;
            }
            None => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn unknown(stmt: &str) -> AdminError {
    syntax(format!(
        "unknown admin console command: \"{stmt}\" (SHOW HELP lists the commands)"
    ))
}

fn name(t: &Token) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.clone()),
        Token::Quoted(q) | Token::Literal(q) => Some(q.clone()),
        Token::Equals => None,
    }
}

/// Parse one statement (without its `;`).
pub fn parse(stmt: &str) -> Result<Command, AdminError> {
    let toks = tokenize(stmt)?;
    let Some(Token::Word(first)) = toks.first() else {
        return Err(unknown(stmt));
    };
    let kw = first.to_ascii_uppercase();
    let rest = &toks[1..];
    let optional_db = |cmd: &str| -> Result<Option<String>, AdminError> {
        match rest {
            [] => Ok(None),
            [t] => name(t)
                .map(Some)
                .ok_or_else(|| syntax(format!("{cmd}: expected a database name"))),
            _ => Err(syntax(format!("{cmd} takes at most one database name"))),
        }
    };
    let required_db = |cmd: &str| -> Result<String, AdminError> {
        match optional_db(cmd)? {
            Some(d) => Ok(d),
            None => Err(syntax(format!("{cmd} needs a database name: {cmd} db"))),
        }
    };
    match kw.as_str() {
        "SHOW" => {
            let [t] = rest else {
                return Err(syntax(
                    "SHOW needs one of: ".to_string() + &show_list() + " (SHOW HELP)",
                ));
            };
            let w = name(t).unwrap_or_default();
            Show::parse(&w).map(Command::Show).ok_or_else(|| {
                syntax(format!(
                    "unknown SHOW target \"{w}\": expected one of {} (SHOW HELP)",
                    show_list()
                ))
            })
        }
        "PAUSE" => optional_db("PAUSE").map(Command::Pause),
        "RESUME" => optional_db("RESUME").map(Command::Resume),
        "DISABLE" => required_db("DISABLE").map(Command::Disable),
        "ENABLE" => required_db("ENABLE").map(Command::Enable),
        "KILL" => optional_db("KILL").map(Command::Kill),
        "RECONNECT" => optional_db("RECONNECT").map(Command::Reconnect),
        "KILL_CLIENT" => {
            let id = required_db("KILL_CLIENT")?;
            id.trim_start_matches("0x")
                .parse::<u64>()
                .map(Command::KillClient)
                .map_err(|_| syntax(format!("KILL_CLIENT: \"{id}\" is not a client id")))
        }
        "RELOAD" | "SHUTDOWN" if !rest.is_empty() => {
            Err(syntax(format!("{kw} takes no arguments")))
        }
        "RELOAD" => Ok(Command::Reload),
        "SHUTDOWN" => Ok(Command::Shutdown),
        "SET" => {
            let (key, value) = match rest {
                [k, Token::Equals, v] => (k, v),
                [k, Token::Word(to), v] if to.eq_ignore_ascii_case("to") => (k, v),
                _ => return Err(syntax("SET: expected SET key = value")),
            };
            let key = name(key).ok_or_else(|| syntax("SET: expected a setting name"))?;
            let value = name(value).ok_or_else(|| syntax("SET: expected a value"))?;
            Ok(Command::Set {
                key: key.to_ascii_lowercase(),
                value,
            })
        }
        _ => Err(unknown(stmt)),
    }
}

fn show_list() -> String {
    Show::ALL
        .iter()
        .map(|(_, k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_are_case_insensitive() {
        assert_eq!(parse("SHOW POOLS").unwrap(), Command::Show(Show::Pools));
        assert_eq!(parse("show pools").unwrap(), Command::Show(Show::Pools));
        assert_eq!(
            parse("Show stats_totals").unwrap(),
            Command::Show(Show::StatsTotals)
        );
        assert!(parse("SHOW").is_err());
        let e = parse("SHOW NOPE").unwrap_err();
        assert_eq!(e.code, "42601");
        assert!(e.message.contains("POOLS"));
    }

    #[test]
    fn control_commands() {
        assert_eq!(parse("pause").unwrap(), Command::Pause(None));
        assert_eq!(
            parse("PAUSE app").unwrap(),
            Command::Pause(Some("app".into()))
        );
        assert_eq!(
            parse("RESUME \"My Db\"").unwrap(),
            Command::Resume(Some("My Db".into()))
        );
        assert!(parse("DISABLE").is_err());
        assert_eq!(parse("enable app").unwrap(), Command::Enable("app".into()));
        assert_eq!(parse("KILL_CLIENT 12").unwrap(), Command::KillClient(12));
        assert_eq!(parse("reload").unwrap(), Command::Reload);
        assert!(parse("RELOAD now").is_err());
        assert!(parse("PAUSE a b").is_err());
    }

    #[test]
    fn set_forms() {
        let want = Command::Set {
            key: "default_pool_size".into(),
            value: "30".into(),
        };
        assert_eq!(parse("SET default_pool_size = 30").unwrap(), want);
        assert_eq!(parse("set DEFAULT_POOL_SIZE=30").unwrap(), want);
        assert_eq!(parse("SET default_pool_size TO '30'").unwrap(), want);
        assert_eq!(
            parse("SET server_reset_query = 'DISCARD ALL'").unwrap(),
            Command::Set {
                key: "server_reset_query".into(),
                value: "DISCARD ALL".into()
            }
        );
        assert_eq!(
            parse("SET server_check_query = 'SELECT ''x'''").unwrap(),
            Command::Set {
                key: "server_check_query".into(),
                value: "SELECT 'x'".into()
            }
        );
        assert!(parse("SET x").is_err());
    }

    #[test]
    fn unknown_commands_point_to_help() {
        let e = parse("SELECT 1").unwrap_err();
        assert_eq!(e.code, "42601");
        assert!(e.message.contains("SHOW HELP"), "{}", e.message);
    }

    #[test]
    fn statements_split_outside_quotes() {
        assert_eq!(split_statements("SHOW POOLS;"), vec!["SHOW POOLS"]);
        assert_eq!(
            split_statements(" show pools ; SET a = 'x;y';"),
            vec!["show pools", "SET a = 'x;y'"]
        );
        assert!(split_statements(" ; ").is_empty());
    }
}
