use super::*;

const EXAMPLE: &str = include_str!("../../config.toml.example");

const MINIMAL: &str = r#"
[[users]]
name = "app"
password = "app-secret"

[[databases]]
name = "app"
[[databases.shards]]
primary = { host = "127.0.0.1" }
"#;

fn err(toml: &str) -> String {
    match Config::from_toml(toml) {
        Ok(_) => panic!("expected an error for:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

/// MINIMAL with `general` lines prepended as a [general] table.
fn with_general(lines: &str) -> String {
    format!("[general]\n{lines}\n{MINIMAL}")
}

fn assert_err(toml: &str, needles: &[&str]) {
    let e = err(toml);
    for n in needles {
        assert!(e.contains(n), "error {e:?} does not contain {n:?}");
    }
}

#[test]
fn defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    let g = &c.general;
    assert_eq!(g.listen_addr, "127.0.0.1:6432");
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.auth_type, AuthType::ScramSha256);
    assert_eq!(g.max_client_conn, 10000);
    assert_eq!(g.client_login_timeout, Duration::from_secs(60));
    assert_eq!(g.max_pending_logins, 1000);
    assert_eq!(g.default_pool_size, 20);
    assert_eq!((g.min_pool_size, g.reserve_pool_size), (0, 0));
    assert_eq!(g.reserve_pool_timeout, Duration::from_secs(5));
    assert_eq!(g.query_wait_timeout, Duration::from_secs(120));
    assert_eq!(g.client_idle_timeout, Duration::ZERO);
    assert_eq!(g.idle_transaction_timeout, Duration::ZERO);
    assert_eq!(g.server_idle_timeout, Duration::from_secs(600));
    assert_eq!(g.server_lifetime, Duration::from_secs(3600));
    assert_eq!(g.server_connect_timeout, Duration::from_secs(5));
    assert_eq!(g.server_login_retry, Duration::from_secs(1));
    assert_eq!(g.server_reset_query, "DISCARD ALL");
    assert_eq!(g.server_check_delay, Duration::from_secs(30));
    assert_eq!(g.server_check_query, "SELECT 1");
    assert_eq!(g.max_prepared_statements, 200);
    assert_eq!(g.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(g.workers, 0);
    assert_eq!(g.max_message_size, 268_435_456);
    assert_eq!(g.max_buffered_bytes, 536_870_912);
    assert!(g.tcp_nodelay);
    assert_eq!(g.admin_database, "pgvane");
    assert!(g.admin_users.is_empty() && g.stats_users.is_empty());
    assert_eq!(g.metrics_addr, None);
    assert!(!g.report_write_lsn);

    let db = &c.databases[0];
    let b = &db.shards[0].primary;
    assert_eq!((b.port, b.weight, b.dbname.as_deref()), (5432, 1, None));
    assert_eq!(b.dbname_or(&db.name), "app");
    assert_eq!(b.addr(), "127.0.0.1:5432");
    assert!(db.shards[0].replicas.is_empty() && db.sharded_tables.is_empty());
    let r = &db.routing;
    assert!(r.read_write_split);
    assert_eq!(r.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(r.max_replica_lag_bytes, 1_048_576);
    assert_eq!(r.max_replica_lag, Duration::from_secs(5));
    assert_eq!(r.lag_check_interval, Duration::from_millis(250));
    assert_eq!(r.read_after_write, ReadAfterWrite::Lsn);
    assert_eq!(r.read_after_write_window, Duration::from_secs(5));
    assert_eq!(r.read_after_write_wait, Duration::ZERO);
    assert_eq!(r.replica_ban_time, Duration::from_secs(30));
    assert_eq!(r.ban_after_errors, 3);
    assert!(r.write_functions.is_empty());
}

#[test]
fn example_file_is_valid_and_complete() {
    let c = Config::from_toml(EXAMPLE).unwrap_or_else(|e| panic!("config.toml.example: {e}"));
    assert_eq!(c.users[0].name, "app");
    assert_eq!(c.users[0].password.as_deref(), Some("app-secret"));
    assert_eq!(c.databases[0].shards[0].primary.addr(), "127.0.0.1:5432");
    assert_eq!(
        c.databases[0].shards[0].primary.dbname.as_deref(),
        Some("app")
    );
    // Every key is documented (as a real or commented-out `key =` line).
    let keys = [
        "listen_addr",
        "pool_mode",
        "auth_type",
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
        "pin_session_state",
        "cache_unnamed_statements",
        "shutdown_timeout",
        "workers",
        "max_message_size",
        "max_buffered_bytes",
        "tcp_nodelay",
        "admin_database",
        "admin_users",
        "stats_users",
        "metrics_addr",
        "report_write_lsn",
        "name",
        "password",
        "server_user",
        "server_password",
        "pool_size",
        "replicas",
        "read_write_split",
        "load_balancing",
        "max_replica_lag_bytes",
        "max_replica_lag",
        "lag_check_interval",
        "read_after_write",
        "read_after_write_window",
        "read_after_write_wait",
        "replica_ban_time",
        "ban_after_errors",
        "write_functions",
        "table",
        "column",
        "type",
        "host",
        "port",
        "dbname",
        "weight",
    ];
    for k in keys {
        assert!(
            EXAMPLE.contains(&format!("{k} =")),
            "config.toml.example does not document `{k}`"
        );
    }
}

#[test]
fn example_sharded_database_is_valid() {
    // Uncomment the `shop` example at the end of the file and validate the result.
    let start = EXAMPLE
        .find("# [[databases]]")
        .expect("commented-out shop example");
    let mut text = EXAMPLE[..start].to_string();
    for line in EXAMPLE[start..].lines() {
        text.push_str(
            line.strip_prefix("# ")
                .or_else(|| line.strip_prefix('#'))
                .unwrap_or(line),
        );
        text.push('\n');
    }
    let c = Config::from_toml(&text).unwrap_or_else(|e| panic!("shop example: {e}\n{text}"));
    let shop = c.database("shop").unwrap();
    assert_eq!(shop.shards.len(), 2);
    assert_eq!(shop.shards[0].replicas.len(), 1);
    let t = &shop.sharded_tables[0];
    assert_eq!(
        (t.table.as_str(), t.column.as_str(), t.r#type),
        ("orders", "customer_id", ShardKeyType::Bigint)
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("fast").is_err());
    let c = Config::from_toml(&with_general(
        "server_lifetime = \"10m\"\nclient_idle_timeout = \"250ms\"",
    ))
    .unwrap();
    assert_eq!(c.general.server_lifetime, Duration::from_secs(600));
    assert_eq!(c.general.client_idle_timeout, Duration::from_millis(250));
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(format_duration(Duration::ZERO), "0s");
}

#[test]
fn bad_duration_names_key() {
    assert_err(
        &with_general("query_wait_timeout = \"5x\""),
        &["general.query_wait_timeout", "5x"],
    );
    assert_err(
        &with_general("query_wait_timeout = 5"),
        &["general.query_wait_timeout"],
    );
    let t = format!("{MINIMAL}[databases.routing]\nmax_replica_lag = \"soon\"\n");
    assert_err(&t, &["databases[0].routing.max_replica_lag", "soon"]);
}

#[test]
fn unknown_keys_are_errors() {
    assert_err(
        &with_general("pool_size = 5"),
        &["general.pool_size", "unknown field `pool_size`", "line 2"],
    );
    let t = MINIMAL.replace(
        "password = \"app-secret\"",
        "password = \"x\"\npasword = \"y\"",
    );
    assert_err(&t, &["users[0].pasword", "unknown field `pasword`"]);
    let t = format!("{MINIMAL}hots = \"db1\"\n");
    assert_err(&t, &["databases[0].shards[0].hots", "unknown field `hots`"]);
    let t = MINIMAL.replace(
        "{ host = \"127.0.0.1\" }",
        "{ host = \"127.0.0.1\", prot = 1 }",
    );
    assert_err(
        &t,
        &[
            "databases[0].shards[0].primary.prot",
            "unknown field `prot`",
        ],
    );
    let t = format!("{MINIMAL}[databases.routing]\nsplit = true\n");
    assert_err(&t, &["databases[0].routing.split"]);
    assert_err(
        &format!("[pgbouncer]\n{MINIMAL}"),
        &["pgbouncer", "unknown field `pgbouncer`"],
    );
}

#[test]
fn bad_enum_values() {
    assert_err(
        &with_general("pool_mode = \"foo\""),
        &["general.pool_mode: unknown value `foo`, expected session | transaction | statement"],
    );
    assert_err(
        &with_general("auth_type = \"cert\""),
        &["general.auth_type", "scram-sha-256 | md5 | plain | trust"],
    );
    let t = format!("{MINIMAL}[databases.routing]\nload_balancing = \"fastest\"\n");
    assert_err(
        &t,
        &[
            "databases[0].routing.load_balancing",
            "round_robin | random | least_connections",
        ],
    );
    assert_eq!("int8".parse::<ShardKeyType>(), Ok(ShardKeyType::Bigint));
    assert_eq!("int4".parse::<ShardKeyType>(), Ok(ShardKeyType::Integer));
    assert_eq!("INT2".parse::<ShardKeyType>(), Ok(ShardKeyType::Smallint));
    assert_eq!("Session".parse::<PoolMode>(), Ok(PoolMode::Session));
    assert_eq!(AuthType::ScramSha256.to_string(), "scram-sha-256");
}

#[test]
fn toml_syntax_error_has_line() {
    assert_err("[general\n", &["line 1"]);
    assert_err(
        &with_general("max_client_conn = \"many\""),
        &["general.max_client_conn"],
    );
}

#[test]
fn general_validation() {
    assert_err(
        &with_general("listen_addr = \"localhost\""),
        &["general.listen_addr", "localhost"],
    );
    assert_err(
        &with_general("metrics_addr = \"nope\""),
        &["general.metrics_addr"],
    );
    assert_err(
        &with_general("default_pool_size = 0"),
        &["general.default_pool_size: must be at least 1"],
    );
    assert_err(
        &with_general("min_pool_size = 21"),
        &["general.min_pool_size"],
    );
    assert_err(
        &with_general("max_client_conn = 0"),
        &["general.max_client_conn"],
    );
    assert_err(
        &with_general("client_login_timeout = \"0s\""),
        &["general.client_login_timeout: must be greater than 0"],
    );
    assert_err(
        &with_general("client_login_timeout = \"soon\""),
        &["general.client_login_timeout", "soon"],
    );
    assert_err(
        &with_general("max_pending_logins = 0"),
        &["general.max_pending_logins: must be at least 1"],
    );
    assert_err(
        &with_general("max_pending_logins = -1"),
        &["general.max_pending_logins"],
    );
    let c = Config::from_toml(&with_general(
        "client_login_timeout = \"1500ms\"\nmax_pending_logins = 5",
    ))
    .unwrap();
    assert_eq!(c.general.client_login_timeout, Duration::from_millis(1500));
    assert_eq!(c.general.max_pending_logins, 5);
    assert_err(
        &with_general("max_message_size = 1023"),
        &["general.max_message_size"],
    );
    assert_err(
        &with_general("max_buffered_bytes = 1048576"),
        &["general.max_buffered_bytes"],
    );
    assert_err(
        &with_general("admin_users = [\"root\"]"),
        &["general.admin_users[0]", "root"],
    );
    assert_err(
        &with_general("stats_users = [\"app\", \"mon\"]"),
        &["general.stats_users[1]", "mon"],
    );
    let c = Config::from_toml(&with_general(
        "listen_addr = \"[::1]:7000\"\nmetrics_addr = \"127.0.0.1:9930\"\nadmin_users = [\"app\"]\nmax_message_size = 1024",
    ))
    .unwrap();
    assert_eq!(c.general.metrics_addr.as_deref(), Some("127.0.0.1:9930"));
}

#[test]
fn user_validation() {
    let db = "[[databases]]\nname = \"app\"\n[[databases.shards]]\nprimary = { host = \"h\" }\n";
    assert_err(db, &["users: at least one"]);
    let two = format!("[[users]]\nname = \"a\"\npassword = \"x\"\n[[users]]\nname = \"a\"\npassword = \"y\"\n{db}");
    assert_err(&two, &["users[1].name: duplicate user `a`"]);
    assert_err(
        &format!("[[users]]\nname = \"\"\npassword = \"x\"\n{db}"),
        &["users[0].name: must not be empty"],
    );
    assert_err(
        &format!("[[users]]\nname = \"a\"\n{db}"),
        &["users[0].password: required"],
    );
    Config::from_toml(&format!(
        "[general]\nauth_type = \"trust\"\n[[users]]\nname = \"a\"\n{db}"
    ))
    .unwrap();
    let pw = |auth: &str, p: &str| {
        format!(
            "[general]\nauth_type = \"{auth}\"\n[[users]]\nname = \"a\"\npassword = \"{p}\"\n{db}"
        )
    };
    assert_err(
        &pw("md5", "md5zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"),
        &["users[0].password", "32 hex"],
    );
    let md5 = "md5d41d8cd98f00b204e9800998ecf8427e";
    Config::from_toml(&pw("md5", md5)).unwrap();
    assert_err(
        &pw("scram-sha-256", md5),
        &["users[0].password", "md5 hash cannot be used"],
    );
    let scram = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVkS2V5:c2VydmVyS2V5";
    Config::from_toml(&pw("scram-sha-256", scram)).unwrap();
    Config::from_toml(&pw("plain", scram)).unwrap();
    assert_err(
        &pw("md5", scram),
        &["users[0].password", "SCRAM-SHA-256 verifier cannot be used"],
    );
    for bad in [
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$4096:salt",
        "SCRAM-SHA-256$0:c2FsdA==$a:b",
        "SCRAM-SHA-256$x:c2FsdA==$a:b",
        "SCRAM-SHA-256$4096:$a:b",
        "SCRAM-SHA-256$4096:c2FsdA==$:b",
        "SCRAM-SHA-256$4096:c2FsdA==$a:",
    ] {
        assert_err(
            &pw("scram-sha-256", bad),
            &["users[0].password: malformed SCRAM-SHA-256 verifier"],
        );
    }
    assert_err(
        &MINIMAL.replace(
            "password = \"app-secret\"",
            "pool_size = 0\npassword = \"x\"",
        ),
        &["users[0].pool_size"],
    );
}

#[test]
fn password_kind() {
    let mut u = Config::from_toml(MINIMAL).unwrap().users[0].clone();
    assert_eq!(
        u.password_kind(),
        Some(PasswordKind::Plain("app-secret".into()))
    );
    u.password = Some("md5d41d8cd98f00b204e9800998ecf8427e".into());
    assert!(matches!(u.password_kind(), Some(PasswordKind::Md5Hash(_))));
    u.password = Some("SCRAM-SHA-256$4096:c2FsdA==$a:b".into());
    assert!(matches!(
        u.password_kind(),
        Some(PasswordKind::ScramVerifier(_))
    ));
    u.password = Some("md5-but-short".into());
    assert!(matches!(u.password_kind(), Some(PasswordKind::Plain(_))));
    u.password = None;
    assert_eq!(u.password_kind(), None);
}

#[test]
fn database_validation() {
    let users = "[[users]]\nname = \"app\"\npassword = \"x\"\n";
    assert_err(users, &["databases: at least one"]);
    assert_err(
        &format!("{users}[[databases]]\nname = \"app\"\n"),
        &["databases[0].shards: at least one shard is required"],
    );
    let shard = "[[databases.shards]]\nprimary = { host = \"h\" }\n";
    let dup =
        format!("{users}[[databases]]\nname = \"a\"\n{shard}[[databases]]\nname = \"a\"\n{shard}");
    assert_err(&dup, &["databases[1].name: duplicate database `a`"]);
    assert_err(
        &format!("{users}[[databases]]\nname = \"\"\n{shard}"),
        &["databases[0].name: must not be empty"],
    );
    assert_err(
        &format!("{users}[[databases]]\nname = \"pgvane\"\n{shard}"),
        &["databases[0].name", "admin"],
    );
    assert_err(
        &MINIMAL.replace("name = \"app\"\n[[", "name = \"app\"\npool_size = 0\n[["),
        &["databases[0].pool_size"],
    );
    let backend = |b: &str| MINIMAL.replace("{ host = \"127.0.0.1\" }", b);
    assert_err(
        &backend("{ host = \"\" }"),
        &["databases[0].shards[0].primary.host: must not be empty"],
    );
    assert_err(
        &backend("{ host = \"h\", port = 0 }"),
        &["databases[0].shards[0].primary.port"],
    );
    assert_err(
        &backend("{ host = \"h\" }\nreplicas = [{ host = \"r\" }, { host = \"r2\", weight = 0 }]"),
        &["databases[0].shards[0].replicas[1].weight: must be at least 1"],
    );
    assert_err(
        &format!("{MINIMAL}[databases.routing]\nlag_check_interval = \"0s\"\n"),
        &["databases[0].routing.lag_check_interval"],
    );
    let table = |t: &str, c: &str| {
        format!(
            "[[databases.sharded_tables]]\ntable = \"{t}\"\ncolumn = \"{c}\"\ntype = \"bigint\"\n"
        )
    };
    assert_err(
        &format!("{MINIMAL}{}", table("", "id")),
        &["databases[0].sharded_tables[0].table: must not be empty"],
    );
    assert_err(
        &format!("{MINIMAL}{}", table("t", "")),
        &["databases[0].sharded_tables[0].column: must not be empty"],
    );
    let twice = format!(
        "{MINIMAL}{}{}",
        table("orders", "id"),
        table("orders", "customer_id")
    );
    assert_err(
        &twice,
        &["databases[0].sharded_tables[1].table", "listed twice"],
    );
}

#[test]
fn all_errors_are_reported() {
    let e = err(&with_general("default_pool_size = 0\nmax_client_conn = 0"));
    assert!(
        e.contains("general.default_pool_size") && e.contains("general.max_client_conn"),
        "{e}"
    );
}

#[test]
fn precedence() {
    let t = format!(
        "[general]\npool_mode = \"session\"\ndefault_pool_size = 7\n{MINIMAL}\
         [[users]]\nname = \"u2\"\npassword = \"x\"\npool_mode = \"statement\"\npool_size = 3\n\
         [[databases]]\nname = \"d2\"\npool_mode = \"transaction\"\npool_size = 11\n\
         [[databases.shards]]\nprimary = {{ host = \"h\" }}\n"
    );
    let c = Config::from_toml(&t).unwrap();
    let (u1, u2) = (c.user("app").unwrap(), c.user("u2").unwrap());
    let (d1, d2) = (c.database("app").unwrap(), c.database("d2").unwrap());
    assert!(c.user("nobody").is_none() && c.database("nowhere").is_none());
    assert_eq!(c.pool_mode_for(u1, d1), PoolMode::Session);
    assert_eq!(c.pool_mode_for(u1, d2), PoolMode::Transaction);
    assert_eq!(c.pool_mode_for(u2, d1), PoolMode::Statement);
    assert_eq!(c.pool_mode_for(u2, d2), PoolMode::Statement);
    assert_eq!(c.pool_size_for(u1, d1), 7);
    assert_eq!(c.pool_size_for(u1, d2), 11);
    assert_eq!(c.pool_size_for(u2, d1), 3);
    assert_eq!(c.pool_size_for(u2, d2), 3);
}

#[test]
fn describe_lists_everything_but_passwords() {
    let t = format!(
        "{MINIMAL}replicas = [{{ host = \"10.1.1.2\", port = 5433, weight = 2 }}]\n\
         [[users]]\nname = \"admin\"\npassword = \"top-secret\"\nserver_password = \"server-secret\"\n\
         [[databases]]\nname = \"shop\"\n\
         [[databases.shards]]\nprimary = {{ host = \"s0\", dbname = \"shop_0\" }}\n\
         [[databases.shards]]\nprimary = {{ host = \"s1\", port = 6543 }}\n\
         [[databases.sharded_tables]]\ntable = \"orders\"\ncolumn = \"customer_id\"\ntype = \"int8\"\n"
    );
    let d = Config::from_toml(&t).unwrap().describe();
    for needle in [
        "127.0.0.1:6432",
        "transaction",
        "scram-sha-256",
        "app",
        "admin",
        "shop",
        "127.0.0.1:5432/app",
        "10.1.1.2:5433",
        "s0:5432/shop_0",
        "s1:6543/shop",
        "orders",
        "customer_id",
        "bigint",
    ] {
        assert!(d.contains(needle), "describe() lacks {needle:?}:\n{d}");
    }
    for secret in ["app-secret", "top-secret", "server-secret"] {
        assert!(!d.contains(secret), "describe() leaks a password:\n{d}");
    }
}

#[test]
fn programmatic_config() {
    let c = Config {
        general: General::default(),
        users: vec![User {
            name: "u".into(),
            password: Some("p".into()),
            server_user: None,
            server_password: None,
            pool_size: None,
            pool_mode: None,
            pin_session_state: None,
            cache_unnamed_statements: None,
        }],
        databases: vec![Database {
            name: "d".into(),
            pool_size: None,
            pool_mode: None,
            pin_session_state: None,
            cache_unnamed_statements: None,
            shards: vec![Shard {
                primary: Backend {
                    host: "::1".into(),
                    port: 5432,
                    dbname: None,
                    weight: 1,
                },
                replicas: vec![],
            }],
            routing: Routing::default(),
            sharded_tables: vec![],
        }],
    };
    c.validate().unwrap();
    assert_eq!(c.databases[0].shards[0].primary.addr(), "[::1]:5432");
    assert_eq!(c.users[0].server_user(), "u");
}

#[test]
fn load_reads_file() {
    let dir = std::env::temp_dir().join(format!("pgvane-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgvane.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    assert_eq!(Config::load(&path).unwrap().databases[0].name, "app");
    let missing = Config::load(&dir.join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("missing.toml") && missing.contains("cannot read"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
