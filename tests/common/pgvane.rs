//! Runs the `pgvane` binary under test as a child process.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::util;

pub use super::util::free_port;

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Path of the pgvane binary: `$PGVANE_BIN` when set (to run the tests against another
/// build, e.g. an older commit), else `CARGO_BIN_EXE_pgvane` (set by cargo for integration
/// tests of the crate that defines the bin).
pub fn pgvane_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGVANE_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_pgvane") {
        return PathBuf::from(p);
    }
    match std::env::var_os("PGVANE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("pgvane binary unknown: CARGO_BIN_EXE_pgvane not set at build time and $PGVANE_BIN unset"),
    }
}

/// A running pgvane process with its config and log in a private temp dir.
/// Drop sends SIGKILL (to this child only) and reaps it.
pub struct Pgvane {
    child: Child,
    port: u16,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    status: Option<ExitStatus>,
    /// Removes `dir` if the test process dies without dropping us.
    watchdog: Option<Child>,
}

impl Pgvane {
    /// Writes `config_toml` to a temp file, runs `pgvane --config <file>` and waits
    /// (15 s) until the listen port accepts TCP. The port is read from the
    /// config: the first `listen*`/`port` key holding `"host:PORT"` or a number
    /// (use [`start_on`](Self::start_on) if that guess would be wrong).
    pub fn start(config_toml: &str) -> Pgvane {
        let port = guess_listen_port(config_toml).unwrap_or_else(|| {
            panic!("Pgvane::start: cannot find the listen port in the config; use Pgvane::start_on\n{config_toml}")
        });
        Pgvane::start_on(port, config_toml)
    }

    /// Picks a free port, builds the config with `make_config(port)` and starts
    /// pgvane on it; if pgvane exits complaining that the address is in use
    /// (another process took the port meanwhile), retries with a new port.
    pub fn start_fn(make_config: impl Fn(u16) -> String) -> Pgvane {
        for attempt in 1.. {
            let port = free_port();
            let mut p = Pgvane::spawn_with_args(&make_config(port), &[]);
            p.port = port;
            match p.try_wait_listening(START_TIMEOUT) {
                Ok(()) => return p,
                Err(msg) => {
                    let log = p.log();
                    let in_use = log.contains("in use") || log.contains("AddrInUse");
                    if !(in_use && attempt < 4) {
                        panic!("{msg}");
                    }
                }
            }
        }
        unreachable!()
    }

    /// Like [`start`](Self::start) with the listen port given explicitly.
    pub fn start_on(port: u16, config_toml: &str) -> Pgvane {
        Pgvane::start_with_args(port, config_toml, &[])
    }

    /// Like [`start_on`](Self::start_on), passing extra command-line arguments.
    pub fn start_with_args(port: u16, config_toml: &str, extra_args: &[&str]) -> Pgvane {
        let mut p = Pgvane::spawn_with_args(config_toml, extra_args);
        p.port = port;
        p.wait_listening(START_TIMEOUT);
        p
    }

    /// Spawns pgvane without waiting for it to listen (e.g. to test that a bad
    /// config makes it exit: `Pgvane::spawn(cfg).wait_exit(..)`). `port()` is the
    /// guessed listen port, or 0.
    pub fn spawn(config_toml: &str) -> Pgvane {
        let mut p = Pgvane::spawn_with_args(config_toml, &[]);
        p.port = guess_listen_port(config_toml).unwrap_or(0);
        p
    }

    fn spawn_with_args(config_toml: &str, extra_args: &[&str]) -> Pgvane {
        let dir = util::make_temp_dir("vane", false);
        let config = dir.join("pgvane.toml");
        let log = dir.join("pgvane.log");
        std::fs::write(&config, config_toml).expect("write pgvane config");
        let logf = File::create(&log).expect("create pgvane log");
        let mut cmd = Command::new(pgvane_bin());
        cmd.arg("--config")
            .arg(&config)
            .args(extra_args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log fd"))
            .stderr(logf)
            .env("RUST_BACKTRACE", "1");
        let child = match spawn_with_pdeathsig(cmd) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("failed to spawn {}: {e}", pgvane_bin().display());
            }
        };
        let watchdog = util::spawn_watchdog(&dir, None);
        Pgvane {
            child,
            port: 0,
            dir,
            config,
            log,
            status: None,
            watchdog,
        }
    }

    /// Waits until 127.0.0.1:port accepts a TCP connection; panics with the log
    /// if pgvane exits or the timeout passes.
    pub fn wait_listening(&mut self, timeout: Duration) {
        if let Err(msg) = self.try_wait_listening(timeout) {
            panic!("{msg}");
        }
    }

    fn try_wait_listening(&mut self, timeout: Duration) -> Result<(), String> {
        assert!(self.port != 0, "wait_listening: unknown port");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + timeout;
        loop {
            let connected = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            // Checked after connecting too: a listener of some other process on
            // the port must not pass for pgvane.
            if let Some(st) = self.try_wait() {
                return Err(format!(
                    "pgvane exited ({st}) before listening on {addr}\n--- pgvane log ---\n{}",
                    self.log()
                ));
            }
            if connected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "pgvane not listening on {addr} after {timeout:?}\n--- pgvane log ---\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything pgvane wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`, `libc::SIGTERM`) to this child only.
    /// Safe against pid reuse: until we reap the child (try_wait/wait_exit/kill
    /// observed its exit) its pid stays reserved, even as a zombie. Panics if
    /// it has already been reaped.
    pub fn signal(&self, sig: i32) {
        if let Some(st) = self.status {
            panic!(
                "signal {sig}: pgvane already exited ({st})\n--- pgvane log ---\n{}",
                self.log()
            );
        }
        // SAFETY: plain syscall on our own, not yet reaped, child pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.child.id(),
            io::Error::last_os_error()
        );
    }

    /// Non-blocking: the exit status if pgvane has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on pgvane");
        }
        self.status
    }

    /// Waits up to `timeout` for pgvane to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        util::poll(timeout, Duration::from_millis(10), || self.try_wait())
    }

    /// SIGKILL + reap (also done by Drop).
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Pgvane {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- pgvane (port {}) log at drop during panic ---\n{}",
                self.port,
                util::tail(&self.log, 80)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        util::stop_watchdog(&mut self.watchdog);
    }
}

/// Finds the listen port in a pgvane TOML config: the first line whose key
/// contains "listen" (or is exactly "port") with a value `"host:PORT"`,
/// `"[::1]:PORT"` or a bare number.
pub fn guess_listen_port(config_toml: &str) -> Option<u16> {
    let mut section = String::new();
    for line in config_toml.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        let v = v
            .trim()
            .trim_matches(|c: char| matches!(c, '"' | '\'' | '[' | ']' | ' '));
        // Backend/server sections (e.g. [[shards]] port = ...) are not the listener.
        let top_level_like = section.is_empty()
            || section.contains("listen")
            || ["general", "pgvane", "proxy", "server", "pooler"].contains(&section.as_str());
        if k.contains("listen") || (k == "port" && top_level_like) {
            if let Some(p) = v.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) {
                return Some(p);
            }
        }
    }
    None
}

/// Spawns `cmd` with `PR_SET_PDEATHSIG = SIGKILL`, so the child dies with the test
/// process even if it is SIGKILLed. PDEATHSIG fires when the *thread* that forked
/// the child exits, so all spawns happen on one dedicated thread that lives as
/// long as the process (test threads and tokio blocking threads come and go).
fn spawn_with_pdeathsig(cmd: Command) -> io::Result<Child> {
    type Req = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Req>();
            std::thread::Builder::new()
                .name("pgvane-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        // SAFETY: getpid/prctl/getppid are async-signal-safe syscalls.
                        let parent = unsafe { libc::getpid() };
                        unsafe {
                            cmd.pre_exec(move || {
                                if libc::prctl(
                                    libc::PR_SET_PDEATHSIG,
                                    libc::SIGKILL as libc::c_ulong,
                                    0,
                                    0,
                                    0,
                                ) != 0
                                {
                                    return Err(io::Error::last_os_error());
                                }
                                // We may have lost the race with the parent dying.
                                if libc::getppid() != parent {
                                    return Err(io::Error::other("parent exited during spawn"));
                                }
                                Ok(())
                            });
                        }
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("spawn pgvane-spawner thread");
            Mutex::new(tx)
        })
        .lock()
        .unwrap()
        .clone();
    let (rtx, rrx) = mpsc::channel();
    tx.send((cmd, rtx)).expect("pgvane-spawner thread gone");
    rrx.recv().expect("pgvane-spawner thread gone")
}
