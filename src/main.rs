//! The `pgvane` command: run the pooler, check a config, or show where keys are placed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgvane::config::{Config, ShardKeyType};
use pgvane::sharding::hash::{self, KeyType};

#[derive(Parser)]
#[command(
    name = "pgvane",
    version,
    about = "PostgreSQL connection pooler with read/write splitting and hash sharding"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', default_value = "config.toml", global = true)]
    config: PathBuf,
    /// Log filter (e.g. info, debug, pgvane=trace); RUST_LOG is used when not given.
    #[arg(long)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print what it would serve, without connecting.
    Check,
    /// Print the shard index of each value: the value, a tab, the shard.
    Shard {
        /// Number of shards (the MODULUS of the hash partitioning).
        #[arg(long)]
        shards: u32,
        /// Key type: smallint | integer | bigint | text | varchar | uuid.
        #[arg(long = "type", default_value = "bigint")]
        key_type: String,
        /// Values in PostgreSQL text form (negative numbers allowed).
        #[arg(allow_negative_numbers = true)]
        values: Vec<String>,
    },
}

fn key_type(t: ShardKeyType) -> KeyType {
    match t {
        ShardKeyType::Smallint => KeyType::Int2,
        ShardKeyType::Integer => KeyType::Int4,
        ShardKeyType::Bigint => KeyType::Int8,
        ShardKeyType::Text | ShardKeyType::Varchar => KeyType::Text,
        ShardKeyType::Uuid => KeyType::Uuid,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match Config::load(&cli.config) {
            Ok(cfg) => {
                print!("{}", cfg.describe());
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgvane: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Shard {
            shards,
            key_type: t,
            values,
        }) => {
            let t = match t.parse::<ShardKeyType>() {
                Ok(t) => key_type(t),
                Err(e) => {
                    eprintln!("pgvane shard: --type: {e}");
                    return ExitCode::from(2);
                }
            };
            match hash::shard_cli(shards, t, &values) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pgvane shard: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => run(&cli),
    }
}

fn run(cli: &Cli) -> ExitCode {
    let filter = match &cli.log_level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgvane: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.general.workers > 0 {
        rt.worker_threads(cfg.general.workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgvane: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config_path = std::fs::canonicalize(&cli.config).unwrap_or_else(|_| cli.config.clone());
    rt.block_on(async move {
        // Signal handlers first: a SIGHUP must never hit the default action (exit).
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            eprintln!("pgvane: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        let listen = cfg.general.listen_addr.clone();
        let metrics_addr = cfg.general.metrics_addr.clone();
        let databases = cfg.databases.clone();
        let monitor_user = cfg.users.first().cloned();
        let app = pgvane::app::App::new(cfg);
        // Start every database's replication monitor now, so replicas are probed (and can take
        // reads) before the first client arrives.
        if let Some(user) = &monitor_user {
            for db in &databases {
                app.db_runtime(db, user);
            }
        }
        app.admin.set_config_path(config_path);
        pgvane::admin::spawn_background(&app);
        if let Some(addr) = metrics_addr {
            match pgvane::metrics::serve(app.clone(), &addr).await {
                Ok(_) => tracing::info!(%addr, "metrics on http://{addr}/metrics"),
                Err(e) => {
                    eprintln!("pgvane: cannot listen on metrics_addr {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // Metrics first: once the client port accepts, every endpoint is up.
        let listener = match pgvane::listener::bind(&listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("pgvane: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        app.admin.set_listening();
        tracing::info!(%listen, "pgvane listening");
        let signals = app.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = signals.shutdown_tx.send(true);
        });
        let reloads = app.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match pgvane::admin::reload_from_file(&reloads) {
                    Ok(notices) => {
                        tracing::info!("configuration reloaded (SIGHUP)");
                        for n in notices {
                            tracing::warn!("{n}");
                        }
                    }
                    Err(e) => tracing::error!("SIGHUP: {e}"),
                }
            }
        });
        pgvane::listener::serve(app, listener).await;
        tracing::info!("pgvane stopped");
        ExitCode::SUCCESS
    })
}
