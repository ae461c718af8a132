//! The admin console: a virtual database (`admin_database`, default "pgvane") that operators
//! reach with psql, speaking PgBouncer's console language over the simple query protocol.
//!
//! Owns: the console session loop (this file), statement parsing ([`commands`]), the SHOW
//! tables ([`show`]), control commands and configuration reload ([`control`], also used by
//! SIGHUP), the `[general]` keys SET may change ([`settings`]) and SHOW STATS periods
//! ([`stats`]).
//!
//! Must not: touch client sessions or server connections except through the hooks the App
//! and pools offer (pause/resume/reconnect/kill/reload).
//!
//! Hand-rolled over `crate::protocol`'s encoders rather than pgwire's server side: the
//! console needs only Query, Terminate and Sync, and text result sets.

pub mod commands;
pub mod control;
pub mod settings;
pub mod show;
pub mod stats;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::App;
use crate::protocol;

use commands::{AdminError, Command};

pub use control::reload_from_file;

/// The server_version reported to admin console clients.
pub const SERVER_VERSION: &str = "15.0 (pgvane)";

/// Largest message the console accepts.
const MAX_MESSAGE: usize = 1 << 20;

/// Console and operations state kept in the App.
pub struct AdminState {
    started: SystemTime,
    config_path: Mutex<Option<PathBuf>>,
    paused: Mutex<HashSet<String>>,
    window: Mutex<stats::Window>,
    listening: AtomicBool,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            started: SystemTime::now(),
            config_path: Mutex::new(None),
            paused: Mutex::new(HashSet::new()),
            window: Mutex::new(stats::Window::default()),
            listening: AtomicBool::new(false),
        }
    }
}

impl AdminState {
    /// The file RELOAD and SIGHUP re-read (set by main).
    pub fn set_config_path(&self, path: PathBuf) {
        if let Ok(mut p) = self.config_path.lock() {
            *p = Some(path);
        }
    }

    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_path.lock().ok().and_then(|p| p.clone())
    }

    /// PAUSE is in effect for `db`: pools created for it should start paused.
    pub fn is_paused(&self, db: &str) -> bool {
        self.paused.lock().map(|p| p.contains(db)).unwrap_or(false)
    }

    pub fn set_paused(&self, db: &str, paused: bool) {
        if let Ok(mut p) = self.paused.lock() {
            if paused {
                p.insert(db.to_string());
            } else {
                p.remove(db);
            }
        }
    }

    pub fn paused_databases(&self) -> Vec<String> {
        self.paused
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn started_at(&self) -> SystemTime {
        self.started
    }

    /// The client listener is bound (set by main; `/readyz` is 503 before).
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

/// Background work of the console: the SHOW STATS periods. Call once after `App::new`.
pub fn spawn_background(app: &Arc<App>) {
    stats::spawn(app);
}

enum Flow {
    Continue,
    Close,
}

/// Serve one console session; `stream` is right after the login's ReadyForQuery.
pub async fn serve(app: Arc<App>, mut stream: TcpStream, user: String, read_only: bool) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    let mut shutdown = app.shutdown_rx.clone();
    // After an extended-protocol message: discard everything until Sync, as PostgreSQL does
    // after an error in an extended-protocol batch.
    let mut skipping = false;
    loop {
        let mut close = false;
        loop {
            let frame = match protocol::split_frame(&mut buf, MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    protocol::error_response(&mut out, "FATAL", "08P01", &e.0);
                    close = true;
                    break;
                }
            };
            match frame[0] {
                b'X' => {
                    close = true;
                    break;
                }
                b'S' => {
                    skipping = false;
                    protocol::ready_for_query(&mut out, b'I');
                }
                b'H' => {}
                _ if skipping => {}
                b'Q' => {
                    let sql = match protocol::query_text(&frame) {
                        Ok(s) => String::from_utf8_lossy(s).into_owned(),
                        Err(e) => {
                            protocol::error_response(&mut out, "FATAL", "08P01", &e.0);
                            close = true;
                            break;
                        }
                    };
                    let flow = run_query(&app, &user, read_only, &sql, &mut out).await;
                    protocol::ready_for_query(&mut out, b'I');
                    if let Flow::Close = flow {
                        close = true;
                        break;
                    }
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'F' | b'd' | b'c' | b'f' => {
                    protocol::error_response(
                        &mut out,
                        "ERROR",
                        "0A000",
                        "the admin console speaks the simple query protocol only",
                    );
                    skipping = true;
                }
                t => {
                    protocol::error_response(
                        &mut out,
                        "FATAL",
                        "08P01",
                        &format!("invalid frontend message type {}", t as char),
                    );
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        let stopping = tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => false,
            },
            r = shutdown.wait_for(|s| *s) => r.is_ok(),
        };
        if stopping {
            protocol::error_response(&mut out, "FATAL", "57P01", "pgvane is shutting down");
            let _ = stream.write_all(&out).await;
            return;
        }
    }
}

/// Run every statement of one Query message; stops at the first error.
async fn run_query(
    app: &Arc<App>,
    user: &str,
    read_only: bool,
    sql: &str,
    out: &mut BytesMut,
) -> Flow {
    let statements = commands::split_statements(sql);
    if statements.is_empty() {
        out.extend_from_slice(&[b'I', 0, 0, 0, 4]); // EmptyQueryResponse
        return Flow::Continue;
    }
    for stmt in statements {
        let cmd = match commands::parse(&stmt) {
            Ok(c) => c,
            Err(e) => {
                protocol::error_response(out, "ERROR", e.code, &e.message);
                return Flow::Continue;
            }
        };
        if read_only && !cmd.read_only() {
            protocol::error_response(
                out,
                "ERROR",
                "42501",
                &format!(
                    "permission denied: user \"{user}\" is a stats user and may only run SHOW commands"
                ),
            );
            return Flow::Continue;
        }
        if !matches!(cmd, Command::Show(_)) {
            tracing::info!(%user, command = %stmt, "admin console");
        }
        match execute(app, cmd).await {
            Ok(Output::Table(t)) => {
                protocol::row_description(out, &t.columns);
                for row in &t.rows {
                    let vals: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
                    protocol::data_row(out, &vals);
                }
                protocol::command_complete(out, "SHOW");
            }
            Ok(Output::Done(d)) => {
                for n in &d.notices {
                    protocol::notice_response(out, "00000", n);
                }
                protocol::command_complete(out, d.tag);
                if d.tag == "SHUTDOWN" {
                    return Flow::Close;
                }
            }
            Err(e) => {
                protocol::error_response(out, "ERROR", e.code, &e.message);
                return Flow::Continue;
            }
        }
    }
    Flow::Continue
}

enum Output {
    Table(show::Table),
    Done(control::Done),
}

async fn execute(app: &Arc<App>, cmd: Command) -> Result<Output, AdminError> {
    let done = match cmd {
        Command::Show(what) => return Ok(Output::Table(show::show(app, what))),
        Command::Pause(db) => control::pause(app, db.as_deref()).await?,
        Command::Resume(db) => control::resume(app, db.as_deref())?,
        Command::Disable(db) => control::disable(app, &db, true)?,
        Command::Enable(db) => control::disable(app, &db, false)?,
        Command::Kill(db) => control::kill(app, db.as_deref())?,
        Command::KillClient(id) => control::kill_client(app, id)?,
        Command::Reconnect(db) => control::reconnect(app, db.as_deref())?,
        Command::Reload => {
            let notices = control::reload_from_file(app)?;
            tracing::info!("configuration reloaded (admin console)");
            control::Done {
                tag: "RELOAD",
                notices,
            }
        }
        Command::Set { key, value } => control::set(app, &key, &value)?,
        Command::Shutdown => {
            tracing::info!("SHUTDOWN from the admin console");
            control::shutdown(app)
        }
    };
    Ok(Output::Done(done))
}
