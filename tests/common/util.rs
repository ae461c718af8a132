//! Low-level helpers shared by the PostgreSQL and pgvane harnesses: locating
//! binaries, free ports, private temp dirs, running commands as `postgres`
//! when we are root, and the per-directory cleanup watchdog.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Prefix of every temp dir this harness creates under /tmp.
pub const TMP_PREFIX: &str = "pgvane-test";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of the `postgres` system user (only needed when running as root).
pub fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let name = CString::new("postgres").unwrap();
        // SAFETY: getpwnam returns a pointer to static storage or NULL; we copy
        // the two integers out immediately (under a OnceLock, so not racing
        // with ourselves).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            panic!(
                "running as root but there is no `postgres` system user; PostgreSQL refuses \
                 to run as root (create one: `useradd --system --user-group postgres`, or run \
                 .ci/run which does it)"
            );
        }
        unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
    })
}

fn has_server_bins(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() && dir.join("postgres").is_file()
}

/// Directory holding the PostgreSQL server binaries. Search order:
/// `$PG_BIN`, `pg_config --bindir`, `/usr/lib/postgresql/<highest>/bin`, `$PATH`.
pub fn pg_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
            let d = PathBuf::from(d);
            if has_server_bins(&d) {
                return d;
            }
            panic!(
                "PG_BIN={} does not contain initdb/pg_ctl/postgres",
                d.display()
            );
        }
        if let Ok(out) = Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
        {
            if out.status.success() {
                let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_server_bins(&d) {
                    return d;
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut best: Option<(Vec<u64>, PathBuf)> = None;
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(ver) = name
                    .split('.')
                    .map(|p| p.parse::<u64>())
                    .collect::<Result<Vec<_>, _>>()
                else {
                    continue;
                };
                let bin = e.path().join("bin");
                if has_server_bins(&bin) && best.as_ref().is_none_or(|(v, _)| ver > *v) {
                    best = Some((ver, bin));
                }
            }
            if let Some((_, d)) = best {
                return d;
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let initdb = dir.join("initdb");
                if initdb.is_file() {
                    // Resolve symlinks (e.g. /usr/local/bin/initdb -> .../15/bin/initdb)
                    // so that pg_ctl, postgres etc. come from the same installation.
                    let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                    let d = real.parent().unwrap().to_path_buf();
                    if has_server_bins(&d) {
                        return d;
                    }
                }
            }
        }
        panic!(
            "PostgreSQL server binaries not found (tried $PG_BIN, `pg_config --bindir`, \
             /usr/lib/postgresql/*/bin, $PATH); install them with \
             `apt-get install -y postgresql postgresql-contrib` or run .ci/run"
        );
    })
}

/// Path of a PostgreSQL program (initdb, pg_ctl, psql, pgbench, ...). Client
/// programs missing from the server bin dir are looked up on `$PATH`.
pub fn bin(name: &str) -> PathBuf {
    let p = pg_bin_dir().join(name);
    if p.is_file() {
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join(name);
            if c.is_file() {
                return c;
            }
        }
    }
    p
}

/// A TCP port on 127.0.0.1 that is free right now and that this process has
/// not handed out before. Ports are picked below the kernel's ephemeral range
/// (`ip_local_port_range`), so client connections made meanwhile (psql,
/// tokio-postgres, pgvane's backend connections) cannot grab the port by
/// accident before the intended server binds it. Callers still retry on bind
/// failures (another process may take it).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    static SEED: AtomicU64 = AtomicU64::new(0);
    let (lo, hi) = non_ephemeral_range();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    if hi > lo + 1000 {
        // Cheap pseudo-random walk (no rand dependency): splitmix64 of pid/time/counter.
        let mut x = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            ^ (std::process::id() as u64).rotate_left(32)
            ^ SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
        for _ in 0..500 {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let port = lo + (z % u64::from(hi - lo)) as u16;
            if given.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    // Fallback: let the kernel choose (from the ephemeral range).
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if given.insert(port) {
            return port;
        }
    }
}

/// [lo, hi) of ports below the ephemeral range (default 32768), from 15000 up.
fn non_ephemeral_range() -> (u16, u16) {
    let eph_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    (15000, eph_lo.max(15000))
}

/// Creates a fresh, private (0700) directory `/tmp/pgvane-test-<kind>-<pid>-<n>-<nanos>`.
/// With `for_postgres` and running as root it is chowned to the postgres user.
pub fn make_temp_dir(kind: &str, for_postgres: bool) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    // PostgreSQL (running as `postgres`) must be able to traverse the parent.
    let base = if for_postgres && is_root() {
        PathBuf::from("/tmp")
    } else {
        base
    };
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = base.join(format!(
            "{TMP_PREFIX}-{kind}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                // umask can only remove bits; make the mode exact.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
                if for_postgres && is_root() {
                    chown_to_postgres(&dir);
                }
                return dir;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create temp dir {}: {e}", dir.display()),
        }
    }
    panic!(
        "could not create a unique temp dir under {}",
        base.display()
    );
}

pub fn chown_to_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
}

/// Writes a file that the server (running as `postgres`) must read.
pub fn write_pg_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown_to_postgres(path);
}

/// Strips libpq environment variables that could redirect our connections.
pub fn scrub_pg_env(cmd: &mut Command) -> &mut Command {
    for v in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGREQUIRESSL",
        "PGAPPNAME",
        "PGDATA",
        "PGTARGETSESSIONATTRS",
        "PGCONNECT_TIMEOUT",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Command for a server-side program (initdb, pg_ctl, pg_basebackup, ...): run as
/// the `postgres` user via `runuser` when we are root. `cwd` must be a directory
/// that user can enter (PostgreSQL tools complain about an unreadable cwd).
pub fn pg_server_cmd(program: &str, cwd: &Path) -> Command {
    let path = bin(program);
    let mut cmd = if is_root() {
        postgres_ids(); // panics with a clear message if the user is missing
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(path);
        c
    } else {
        Command::new(path)
    };
    scrub_pg_env(&mut cmd);
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .env("LC_ALL", "C.UTF-8");
    cmd
}

/// Runs a command to completion, returning its output; panics if it cannot be spawned.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"))
}

pub fn output_text(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Last `n` lines of a (log) file, or a note that it could not be read.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let s = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Polls `f` every `every` until it returns `Some` or `timeout` elapses.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Spawns a detached watchdog (own session, survives us) that waits until this
/// test process is gone, then stops the server in `data_dir` (if any) with
/// `pg_ctl stop -m immediate` and removes `root`. Dropping the returned `Child`
/// via [`stop_watchdog`] cancels it once normal cleanup has happened.
pub fn spawn_watchdog(root: &Path, data_dir: Option<&Path>) -> Option<Child> {
    let pid = std::process::id();
    // "Alive" = exists and is not a zombie (a zombie still answers kill -0).
    let mut script = format!(
        "alive() {{ if [ -r /proc/{pid}/stat ]; then \
           s=$(sed -n 's/.*) \\(.\\).*/\\1/p' /proc/{pid}/stat 2>/dev/null); \
           [ -n \"$s\" ] && [ \"$s\" != Z ]; \
         else kill -0 {pid} 2>/dev/null; fi; }}; \
         while alive; do sleep 0.5; done; "
    );
    if let Some(data) = data_dir {
        let pg_ctl = sh_quote(&bin("pg_ctl").to_string_lossy());
        let data = sh_quote(&data.to_string_lossy());
        let run_as = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        script.push_str(&format!(
            "if [ -f {data}/postmaster.pid ]; then {run_as}{pg_ctl} -D {data} stop -m immediate -w -t 30; fi; "
        ));
    }
    script.push_str(&format!("rm -rf {}", sh_quote(&root.to_string_lossy())));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe. A new session detaches the watchdog
    // from our terminal / process group so signals aimed at the test run
    // (Ctrl-C, timeouts killing the group) do not take it down with us.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!(
                "warning: could not spawn cleanup watchdog for {}: {e}",
                root.display()
            );
            None
        }
    }
}

/// Cancels a watchdog we spawned ourselves (by its own pid) and reaps it.
pub fn stop_watchdog(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
