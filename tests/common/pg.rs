//! Real, throw-away PostgreSQL servers (primaries and streaming replicas).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::util::{self, output_text, pg_server_cmd, run, tail};

/// Password of the `app` role (SCRAM-SHA-256, superuser, owns database `app`).
pub const APP_PASSWORD: &str = "app-secret";
/// Password of `md5user` (stored as md5, pg_hba method md5).
pub const MD5_PASSWORD: &str = "md5-secret";
/// Password of `passuser` (pg_hba method `password`, i.e. cleartext).
pub const PASS_PASSWORD: &str = "pass-secret";

/// The password the harness gave a test role, if any (`postgres` and `trustuser` have none).
pub fn password_for(user: &str) -> Option<&'static str> {
    match user {
        "app" => Some(APP_PASSWORD),
        "md5user" => Some(MD5_PASSWORD),
        "passuser" => Some(PASS_PASSWORD),
        _ => None,
    }
}

const PG_HBA: &str = "\
# written by the pgvane test harness; loopback only
host    all          trustuser  127.0.0.1/32  trust
host    all          md5user    127.0.0.1/32  md5
host    all          passuser   127.0.0.1/32  password
host    replication  all        127.0.0.1/32  trust
host    all          postgres   127.0.0.1/32  trust
host    all          all        127.0.0.1/32  scram-sha-256
";

/// File (inside the data dir) holding the harness's settings; `postgresql.conf`
/// includes it at its end so these values win.
const CONF_FILE: &str = "pgvane_test.conf";
/// Server log, inside the data dir.
const LOG_FILE: &str = "server.log";

const START_ATTEMPTS: usize = 6;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`PgServer::start_with`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `max_connections` (default 300).
    pub max_connections: u32,
    /// `shared_preload_libraries`, e.g. `vec!["pg_stat_statements".into()]`.
    pub shared_preload_libraries: Vec<String>,
    /// Extra `postgresql.conf` lines, appended last (so they override ours).
    pub extra_conf: Vec<String>,
    /// Create the test roles and the `app` database after start (default true).
    pub create_roles: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 300,
            shared_preload_libraries: Vec::new(),
            extra_conf: Vec::new(),
            create_roles: true,
        }
    }
}

impl PgOptions {
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }
    /// Adds a library to `shared_preload_libraries` (e.g. "pg_stat_statements").
    pub fn preload(mut self, lib: &str) -> Self {
        self.shared_preload_libraries.push(lib.to_string());
        self
    }
    /// Adds a raw `postgresql.conf` line, e.g. `"log_connections = on"`.
    pub fn conf(mut self, line: &str) -> Self {
        self.extra_conf.push(line.to_string());
        self
    }
    pub fn create_roles(mut self, yes: bool) -> Self {
        self.create_roles = yes;
        self
    }
}

/// A PostgreSQL server running from a private temp dir on 127.0.0.1:`port()`.
///
/// Dropping it stops the server (`pg_ctl stop -m immediate`) and deletes the
/// directory; a detached watchdog does the same if the test process dies
/// without running destructors (e.g. servers kept in `static`s).
pub struct PgServer {
    root: PathBuf,
    data: PathBuf,
    port: u16,
    opts: PgOptions,
    replica: bool,
    running: bool,
    watchdog: Option<Child>,
}

impl PgServer {
    /// initdb + start with default options (roles and `app` db created).
    pub fn start() -> PgServer {
        PgServer::start_with(PgOptions::default())
    }

    pub fn start_with(opts: PgOptions) -> PgServer {
        let root = util::make_temp_dir("pg", true);
        let data = root.join("data");
        let watchdog = util::spawn_watchdog(&root, Some(&data));
        // From here on, a panic drops `srv`, which cleans up.
        let mut srv = PgServer {
            root,
            data,
            port: 0,
            opts,
            replica: false,
            running: false,
            watchdog,
        };

        let out = run(pg_server_cmd("initdb", &srv.root)
            .arg("-D")
            .arg(&srv.data)
            .args([
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ]));
        if !out.status.success() {
            panic!(
                "initdb failed for {}:\n{}",
                srv.data.display(),
                output_text(&out)
            );
        }
        util::write_pg_file(&srv.data.join("pg_hba.conf"), PG_HBA);
        let conf = srv.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&format!("\n# pgvane test harness\ninclude '{CONF_FILE}'\n"));
        util::write_pg_file(&conf, &text);

        srv.start_on_free_port();
        if srv.opts.create_roles {
            srv.create_roles();
        }
        srv
    }

    /// A streaming replica of `self`: `pg_basebackup -R -X stream` into a new temp
    /// dir, started on its own port; returns once it is in recovery and accepts
    /// connections.
    pub fn start_replica(&self) -> PgServer {
        assert!(
            self.running,
            "start_replica: primary on port {} is not running",
            self.port
        );
        let root = util::make_temp_dir("pg", true);
        let data = root.join("data");
        let watchdog = util::spawn_watchdog(&root, Some(&data));
        let mut rep = PgServer {
            root,
            data,
            port: 0,
            opts: self.opts.clone(),
            replica: true,
            running: false,
            watchdog,
        };
        let out = run(pg_server_cmd("pg_basebackup", &rep.root)
            .arg("-D")
            .arg(&rep.data)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-w"]));
        if !out.status.success() {
            panic!(
                "pg_basebackup from primary on port {} failed:\n{}\n--- primary log tail ---\n{}",
                self.port,
                output_text(&out),
                self.log_tail(40)
            );
        }
        // The primary's log was copied along; start the replica's own.
        util::write_pg_file(&rep.log_path(), "");
        rep.start_on_free_port();
        let ok = util::poll(READY_TIMEOUT, Duration::from_millis(100), || {
            (rep.try_psql("postgres", "SELECT pg_is_in_recovery()")
                .ok()?
                == "t")
                .then_some(())
        });
        if ok.is_none() {
            panic!(
                "replica on port {} did not report pg_is_in_recovery() = true\n--- replica log tail ---\n{}",
                rep.port,
                rep.log_tail(60)
            );
        }
        rep
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PostgreSQL data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn log_path(&self) -> PathBuf {
        self.data.join(LOG_FILE)
    }

    /// Last `n` lines of the server log (for assertion messages).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path(), n)
    }

    pub fn is_replica(&self) -> bool {
        self.replica
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Path of a PostgreSQL program (`psql`, `pgbench`, `pg_ctl`, ...).
    pub fn bin(name: &str) -> PathBuf {
        util::bin(name)
    }

    /// libpq/tokio-postgres connection string to this server; includes the
    /// harness password for `app`, `md5user` and `passuser`.
    pub fn connstr(&self, user: &str, db: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={user} dbname={db} connect_timeout=10",
            self.port
        );
        if let Some(pw) = password_for(user) {
            s.push_str(&format!(" password={pw}"));
        }
        s
    }

    /// Runs `sql` with psql as superuser `postgres` on database `db`; returns the
    /// trimmed unaligned tuples-only output. Panics (with stderr) on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| {
            panic!(
                "psql on port {} db {db} failed for SQL {sql:?}:\n{e}",
                self.port
            )
        })
    }

    /// Like [`psql`](Self::psql) but returns the error text instead of panicking.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(util::bin("psql"));
        util::scrub_pg_env(&mut cmd);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .args(["-At", "-X", "-w", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
        let out = run(&mut cmd);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(output_text(&out))
        }
    }

    /// `pg_ctl stop -m fast`; no-op if already stopped.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// `pg_ctl stop -m immediate` (simulates a crash: no shutdown checkpoint,
    /// clients get their connections cut; crash recovery on the next start).
    ///
    /// The servers run with `synchronous_commit = off`, so commits from the last
    /// moment could still be in WAL buffers; to behave like a production server
    /// (synchronous commit on), WAL is flushed first on a primary, so every
    /// transaction that reported COMMIT before this call survives the "crash".
    pub fn kill_immediate(&mut self) {
        if self.running && !self.replica {
            let _ = self.try_psql("postgres", "SET synchronous_commit = on; SELECT pg_logical_emit_message(true, 'pgvane-test', '')");
        }
        self.pg_ctl_stop("immediate");
    }

    /// Stops (fast) if running, then starts again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.try_start() {
                Ok(()) => break,
                Err(e) if e.port_in_use && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!(
                    "restart of server on port {} failed:\n{}",
                    self.port, e.text
                ),
            }
        }
        self.wait_ready();
    }

    /// On a replica: pause WAL replay and wait until it is actually paused.
    pub fn pause_replay(&self) {
        assert!(self.replica, "pause_replay called on a primary");
        self.psql("postgres", "SELECT pg_wal_replay_pause()");
        let ok = util::poll(Duration::from_secs(30), Duration::from_millis(20), || {
            (self.psql("postgres", "SELECT pg_get_wal_replay_pause_state()") == "paused")
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "replica on port {} did not pause replay",
            self.port
        );
    }

    /// On a replica: resume WAL replay.
    pub fn resume_replay(&self) {
        assert!(self.replica, "resume_replay called on a primary");
        self.psql("postgres", "SELECT pg_wal_replay_resume()");
    }

    /// Bytes received by this replica but not replayed yet.
    pub fn replay_lag_bytes(&self) -> i64 {
        self.psql(
            "postgres",
            "SELECT COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint",
        )
        .parse()
        .expect("replay lag")
    }

    /// Waits (30 s) until this replica has *received* all WAL the primary had
    /// written when called (replay may still be behind, e.g. when paused).
    pub fn wait_received(&self, primary: &PgServer) {
        self.wait_lsn(primary, "pg_last_wal_receive_lsn()");
    }

    /// Waits (30 s) until this replica has *replayed* all WAL the primary had
    /// written when called, so everything committed before is visible here.
    pub fn wait_replay_caught_up(&self, primary: &PgServer) {
        self.wait_lsn(primary, "pg_last_wal_replay_lsn()");
    }

    fn wait_lsn(&self, primary: &PgServer, func: &str) {
        assert!(self.replica, "wait on a primary");
        let target = primary.wal_flush_point();
        let sql = format!("SELECT COALESCE({func} >= '{target}'::pg_lsn, false)");
        let ok = util::poll(Duration::from_secs(30), Duration::from_millis(20), || {
            (self.psql("postgres", &sql) == "t").then_some(())
        });
        if ok.is_none() {
            let state = self.try_psql(
                "postgres",
                "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), pg_get_wal_replay_pause_state()",
            );
            panic!(
                "replica on port {} did not reach {func} >= {target} within 30 s \
                 (receive|replay|pause state: {state:?})\n--- replica log tail ---\n{}",
                self.port,
                self.log_tail(40)
            );
        }
    }

    // ---- internals ---------------------------------------------------------

    /// On a primary: forces everything written so far to be flushed (a tiny
    /// synchronously committed transaction that writes WAL -- one that only
    /// gets an xid would commit asynchronously anyway; with `synchronous_commit = off`,
    /// recent commits may otherwise still sit in WAL buffers) and returns the
    /// flush LSN, which a replica's receive/replay LSN reaches once it has
    /// all of that WAL.
    fn wal_flush_point(&self) -> String {
        self.psql(
            "postgres",
            "SET synchronous_commit = on; SELECT pg_logical_emit_message(true, 'pgvane-test', '')",
        );
        self.psql("postgres", "SELECT pg_current_wal_flush_lsn()")
    }

    fn write_conf(&self) {
        let mut c = String::from("# written by the pgvane test harness\n");
        let socket_dir = self.root.to_string_lossy().replace('\'', "''");
        let libs = self.opts.shared_preload_libraries.join(",");
        c.push_str(&format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = {maxc}\n\
             shared_preload_libraries = '{libs}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             wal_keep_size = '128MB'\n\
             hot_standby = on\n\
             shared_buffers = '64MB'\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_min_messages = warning\n\
             log_timezone = 'UTC'\n\
             timezone = 'UTC'\n",
            port = self.port,
            maxc = self.opts.max_connections,
        ));
        for line in &self.opts.extra_conf {
            c.push_str(line);
            c.push('\n');
        }
        util::write_pg_file(&self.data.join(CONF_FILE), &c);
    }

    fn try_start(&mut self) -> Result<(), StartError> {
        self.write_conf();
        let out = run(pg_server_cmd("pg_ctl", &self.root)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"]));
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        let log = self.log_tail(40);
        // pg_ctl may have timed out with a postmaster still starting: make sure
        // nothing of ours is left before retrying or giving up.
        let _ = run(pg_server_cmd("pg_ctl", &self.root)
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w", "-t", "30"]));
        let port_in_use = log.contains("could not bind")
            || log.contains("Address already in use")
            || log.contains("could not create any TCP/IP sockets");
        Err(StartError {
            port_in_use,
            text: format!(
                "{}\n--- server log tail ({}) ---\n{log}",
                output_text(&out),
                self.log_path().display()
            ),
        })
    }

    fn start_on_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            self.port = util::free_port();
            match self.try_start() {
                Ok(()) => {
                    self.wait_ready();
                    return;
                }
                Err(e) if e.port_in_use => last = e.text,
                Err(e) => panic!(
                    "starting PostgreSQL in {} failed:\n{}",
                    self.data.display(),
                    e.text
                ),
            }
        }
        panic!("starting PostgreSQL failed {START_ATTEMPTS} times (port conflicts):\n{last}");
    }

    /// Waits until the server accepts a real query over TCP.
    fn wait_ready(&self) {
        let mut last = String::new();
        let ok = util::poll(READY_TIMEOUT, Duration::from_millis(50), || {
            let isready = run(Command::new(util::bin("pg_isready")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "5",
            ]));
            if !isready.status.success() {
                last = output_text(&isready);
                return None;
            }
            match self.try_psql("postgres", "SELECT 1") {
                Ok(s) if s == "1" => Some(()),
                Ok(s) => {
                    last = s;
                    None
                }
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        if ok.is_none() {
            panic!(
                "PostgreSQL on port {} not ready after {READY_TIMEOUT:?}; last error:\n{last}\n--- server log tail ---\n{}",
                self.port,
                self.log_tail(60)
            );
        }
    }

    fn create_roles(&self) {
        for sql in [
            format!("CREATE ROLE app LOGIN SUPERUSER PASSWORD '{APP_PASSWORD}'"),
            format!(
                "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD '{MD5_PASSWORD}'"
            ),
            format!("CREATE ROLE passuser LOGIN PASSWORD '{PASS_PASSWORD}'"),
            "CREATE ROLE trustuser LOGIN".to_string(),
            "CREATE DATABASE app OWNER app".to_string(),
        ] {
            self.psql("postgres", &sql);
        }
        // Let the non-superuser test roles create objects in app's public schema.
        self.psql("app", "GRANT ALL ON SCHEMA public TO PUBLIC");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if let Err(e) = self.try_pg_ctl_stop(mode) {
            panic!("{e}");
        }
    }

    fn try_pg_ctl_stop(&mut self, mode: &str) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        let out = run(pg_server_cmd("pg_ctl", &self.root)
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", mode, "-w", "-t", "60"]));
        self.running = false;
        // pg_ctl also fails when the server is already gone (then there is no
        // postmaster.pid any more): only a server still there is an error.
        if !out.status.success() && self.data.join("postmaster.pid").exists() {
            return Err(format!(
                "pg_ctl stop -m {mode} failed on port {}:\n{}\n--- server log tail ---\n{}",
                self.port,
                output_text(&out),
                self.log_tail(30)
            ));
        }
        Ok(())
    }
}

struct StartError {
    port_in_use: bool,
    text: String,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.running {
            eprintln!(
                "--- PostgreSQL (port {}) log tail at drop during panic ---\n{}",
                self.port,
                self.log_tail(30)
            );
        }
        let mut clean = true;
        if self.data.join("postmaster.pid").exists() {
            self.running = true; // also covers a half-started server
            if let Err(e) = self.try_pg_ctl_stop("immediate") {
                eprintln!("warning: {e}");
                clean = false;
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if clean && !self.root.exists() {
            util::stop_watchdog(&mut self.watchdog);
        } // else the watchdog retries once the test process is gone
    }
}

/// One server shared by all tests of this test binary (default options).
/// Use only where sharing is safe (no restarts, no global settings changes).
pub fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(PgServer::start)
}

/// A replica of [`shared()`], shared the same way. Do not pause its replay.
pub fn shared_replica() -> &'static PgServer {
    static REPLICA: OnceLock<PgServer> = OnceLock::new();
    REPLICA.get_or_init(|| shared().start_replica())
}
