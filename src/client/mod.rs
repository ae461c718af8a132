//! Client connections: from accept to an authenticated session.
//!
//! Owns: the startup phase (SSL/GSSENC refusal, CancelRequest, protocol version negotiation),
//! client authentication against `[[users]]` per `auth_type` (the exchange itself is in
//! [`authenticate`]), `client_login_timeout`, closing a login pushed out by newer ones
//! (`max_pending_logins`), claiming a `max_client_conn` slot once logged in, the rate-limited
//! log of failed logins, the login reply (ParameterStatus, BackendKeyData) and handing the
//! connection to the session state machine in [`session`].
//!
//! Must not: touch server connections except to learn a backend's reported parameters; all
//! statement traffic belongs to the session.

mod authenticate;

pub mod budget;
mod fanout;
mod forward;
pub mod prepared;
mod reply;
mod route;
mod session;
mod startup_check;
mod statements;
pub mod tracker;

/// PostgreSQL's FATAL after a client broke the message stream.
pub(crate) const LOST_SYNC: &str =
    "terminating connection because protocol synchronization was lost";

pub use fanout::{merge_responses, merge_tags};
pub use route::{choose_role, Role, RoleContext};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::{App, LoginTicket};
use crate::config::AuthType;
use crate::logging::{bounded, RateLimit};
use crate::params;
use crate::protocol::{self, Startup};
use authenticate::authenticate;

/// A `max_client_conn` slot, held from a successful login until the connection ends.
pub struct ClientGuard(pub Arc<App>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Take a client slot, or refuse as PostgreSQL does when it is full.
fn claim_client(app: &Arc<App>) -> Result<ClientGuard, Reject> {
    let max = app.config().general.max_client_conn;
    let n = app.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = ClientGuard(app.clone());
    if n > max {
        return Err(Reject("53300", "sorry, too many clients already".into()));
    }
    Ok(guard)
}

/// A successful login: a pooled session, or the admin console.
enum Login {
    Session(Box<session::SessionCtx>),
    Admin { user: String, read_only: bool },
}

/// A failed login: SQLSTATE and message sent as FATAL before closing.
struct Reject(&'static str, String);

impl From<std::io::Error> for Reject {
    fn from(e: std::io::Error) -> Self {
        Reject("08006", e.to_string())
    }
}

impl From<protocol::ProtocolError> for Reject {
    fn from(e: protocol::ProtocolError) -> Self {
        Reject("08P01", e.0)
    }
}

/// What the login got to, for the timeout reply and the log.
#[derive(Default)]
struct Progress {
    /// A startup packet arrived (before that, PostgreSQL closes without a word).
    started: bool,
    user: Option<String>,
    database: Option<String>,
}

/// Failed logins: at most this many log lines per second (the rest are counted).
static LOGIN_FAILED: RateLimit = RateLimit::per_second(10);
/// Logins closed for taking too long or pushed out by newer ones.
static LOGIN_DROPPED: RateLimit = RateLimit::per_second(5);

/// Serve one accepted client connection until it ends. `ticket` is its place among the
/// pending logins, given up once the login is over.
pub async fn handle(app: Arc<App>, mut stream: TcpStream, ticket: LoginTicket) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let timeout = app.config().general.client_login_timeout;
    let mut out = BytesMut::new();
    let mut progress = Progress::default();
    // Boxed: the login state machine (SCRAM, startup parsing) is large and is not needed once
    // the session runs, so it must not inflate every idle client's task.
    let outcome = {
        let auth = Box::pin(authenticate_client(
            &app,
            &mut stream,
            &mut out,
            &mut progress,
        ));
        tokio::select! {
            r = tokio::time::timeout(timeout, auth) => r.map_err(|_| Dropped::TimedOut),
            _ = ticket.evicted.notified() => Err(Dropped::Evicted),
        }
    };
    // Authenticated (or failed): no longer a pending login.
    drop(ticket);
    let outcome = match outcome {
        Ok(Ok(Some(a))) => Ok(Box::pin(finish_login(&app, &mut stream, &mut out, &peer, a)).await),
        Ok(Ok(None)) => return,
        Ok(Err(r)) => Ok(Err(r)),
        Err(why) => Err(why),
    };
    // Login buffers are not kept for the life of the session (idle clients stay small).
    let (login, _slot) = match outcome {
        Ok(Ok(l)) => {
            drop(out);
            l
        }
        Ok(Err(Reject(code, msg))) => {
            // A socket closed before saying anything (a port probe) is no failed login;
            // PostgreSQL does not log it either.
            if progress.started || code != "08006" {
                log_failed(&peer, &progress, code, &msg);
            }
            if !msg.starts_with(BAD_STARTUP_LENGTH) {
                protocol::error_response(&mut out, "FATAL", code, &msg);
                let _ = stream.write_all(&out).await;
            }
            return;
        }
        Err(why) => {
            if let Some(suppressed) = LOGIN_DROPPED.check() {
                tracing::info!(
                    %peer,
                    started = progress.started,
                    suppressed,
                    "{}",
                    why.log_line()
                );
            }
            // Before a startup packet PostgreSQL closes silently; during authentication it
            // says why.
            if progress.started {
                let (code, msg) = why.reply();
                out.clear();
                protocol::error_response(&mut out, "FATAL", code, msg);
                let _ = stream.write_all(&out).await;
            }
            return;
        }
    };
    match login {
        Login::Session(ctx) => session::run(app, stream, *ctx).await,
        Login::Admin { user, read_only } => crate::admin::serve(app, stream, user, read_only).await,
    }
}

/// Why a login was cut off.
enum Dropped {
    TimedOut,
    Evicted,
}

impl Dropped {
    fn reply(&self) -> (&'static str, &'static str) {
        match self {
            Dropped::TimedOut => ("57014", "canceling authentication due to timeout"),
            Dropped::Evicted => ("53300", "sorry, too many clients already"),
        }
    }

    fn log_line(&self) -> &'static str {
        match self {
            Dropped::TimedOut => "login timed out (client_login_timeout); connection closed",
            Dropped::Evicted => {
                "max_pending_logins reached: closed the oldest connection still logging in"
            }
        }
    }
}

/// One rate-limited line per failed login, naming the peer (user names bounded and escaped).
fn log_failed(peer: &str, p: &Progress, code: &str, msg: &str) {
    let Some(suppressed) = LOGIN_FAILED.check() else {
        return;
    };
    if suppressed > 0 {
        tracing::warn!("suppressed {suppressed} similar messages (login failed)");
    }
    let user = p.user.as_deref().map(|u| bounded(u, 64));
    let database = p.database.as_deref().map(|d| bounded(d, 64));
    tracing::warn!(
        %peer,
        user = ?user,
        database = ?database,
        code,
        reason = ?bounded(msg, 200),
        "login failed"
    );
}

/// PostgreSQL logs this and closes the connection without a word (COMMERROR): a client
/// that sent something else first (node-postgres' Terminate before its startup packet)
/// must not receive an error message it does not expect.
const BAD_STARTUP_LENGTH: &str = "invalid length of startup packet";

async fn read_startup_packet(stream: &mut TcpStream) -> Result<Vec<u8>, Reject> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = i32::from_be_bytes(len);
    if !(8..=protocol::MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(Reject("08P01", format!("{BAD_STARTUP_LENGTH} ({len})")));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// An authenticated client, holding its `max_client_conn` slot.
struct Authed {
    cfg: Arc<crate::config::Config>,
    user: crate::config::User,
    db_name: String,
    startup: Vec<(String, String)>,
    slot: ClientGuard,
}

/// Startup packet and authentication, the part bounded by `client_login_timeout` and
/// `max_pending_logins`: `Ok(None)` for a CancelRequest.
async fn authenticate_client(
    app: &Arc<App>,
    stream: &mut TcpStream,
    out: &mut BytesMut,
    progress: &mut Progress,
) -> Result<Option<Authed>, Reject> {
    let (minor, startup) = loop {
        let body = read_startup_packet(stream).await?;
        match protocol::parse_startup(&body)? {
            Startup::Ssl | Startup::GssEnc => stream.write_all(b"N").await?,
            Startup::Cancel { pid, secret } => {
                if let Some(t) = app.cancel_target(pid, secret) {
                    if let Err(e) = crate::server::send_cancel(&t.addr, t.pid, t.secret).await {
                        static CANCEL: crate::logging::RateLimit =
                            crate::logging::RateLimit::per_second(5);
                        if let Some(suppressed) = CANCEL.check() {
                            tracing::warn!(error = %e, suppressed, "forwarding cancel request failed");
                        }
                    }
                }
                return Ok(None);
            }
            Startup::Startup { minor, params } => break (minor, params),
        }
    };
    progress.started = true;
    // Newer 3.x minors and protocol options (_pq_.*) are declined, as PostgreSQL does.
    let unsupported: Vec<&str> = startup
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        protocol::negotiate_protocol_version(out, 0, &unsupported);
    }
    let get = |k: &str| startup.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user_name = get("user").ok_or_else(|| {
        Reject(
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        )
    })?;
    let db_name = get("database").unwrap_or_else(|| user_name.clone());
    progress.user = Some(user_name.clone());
    progress.database = Some(db_name.clone());
    if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(Reject(
            "08P01",
            "replication connections are not supported by pgvane".into(),
        ));
    }
    let cfg = app.config();
    let auth_type = cfg.general.auth_type;
    let user = cfg.user(&user_name).cloned();
    let Some(user) = user else {
        if auth_type == AuthType::Trust {
            // As PostgreSQL under trust: authentication succeeds, then the role lookup fails.
            protocol::auth_ok(out);
            return Err(Reject(
                "28000",
                format!("role \"{user_name}\" does not exist"),
            ));
        }
        // The same exchange and the same 28P01 as a wrong password.
        authenticate(app, stream, out, &user_name, None, auth_type).await?;
        return Err(authenticate::auth_failed(&user_name));
    };
    authenticate(app, stream, out, &user_name, Some(&user), auth_type).await?;
    let slot = claim_client(app)?;
    protocol::auth_ok(out);
    Ok(Some(Authed {
        cfg,
        user,
        db_name,
        startup,
        slot,
    }))
}

/// After authentication: the admin console or a database's pools, and the login reply.
async fn finish_login(
    app: &Arc<App>,
    stream: &mut TcpStream,
    out: &mut BytesMut,
    peer: &str,
    a: Authed,
) -> Result<(Login, ClientGuard), Reject> {
    let Authed {
        cfg,
        user,
        db_name,
        startup,
        slot,
    } = a;
    if db_name == cfg.general.admin_database {
        let admin = cfg.general.admin_users.contains(&user.name);
        let stats = cfg.general.stats_users.contains(&user.name);
        if !admin && !stats {
            return Err(Reject(
                "28000",
                format!("user \"{}\" may not use the admin console", user.name),
            ));
        }
        for (k, v) in [
            ("server_version", crate::admin::SERVER_VERSION),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            protocol::parameter_status(out, k, v);
        }
        protocol::backend_key_data(out, 0, 0);
        protocol::ready_for_query(out, b'I');
        stream.write_all(out).await?;
        out.clear();
        let login = Login::Admin {
            user: user.name.clone(),
            read_only: !admin,
        };
        return Ok((login, slot));
    }
    let Some(db) = cfg.database(&db_name).cloned() else {
        return Err(Reject(
            "3D000",
            format!("database \"{db_name}\" does not exist"),
        ));
    };
    if app.is_disabled(&db.name) {
        return Err(Reject(
            "57P03",
            format!("database \"{db_name}\" is disabled"),
        ));
    }
    if app.is_shutting_down() {
        return Err(Reject("57P03", "pgvane is shutting down".into()));
    }
    let pools = app.pools_for(&user, &db);
    let runtime = app.db_runtime(&db, &user);
    let mode = cfg.pool_mode_for(&user, &db);
    let startup_params = params::from_startup(&startup);

    // What the client is told about the server: a backend's login values, with the client's
    // own startup settings laid over them.
    let mut reported = None;
    let mut last_err = None;
    for shard in &pools.shards {
        for pool in std::iter::once(&shard.primary).chain(shard.replicas.iter()) {
            match pool.reported_params().await {
                Ok(r) => {
                    reported = Some(r);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if reported.is_some() {
            break;
        }
    }
    let Some(reported) = reported else {
        let (code, msg) = last_err
            .map(|e| e.sqlstate())
            .unwrap_or(("08006", "no backend".into()));
        return Err(Reject(code, msg));
    };
    // PostgreSQL refuses a login whose settings it rejects, and reports the values as it
    // shows them (`UTF8` for `utf8`), not as typed.
    let shown = startup_check::check(
        &pools.shards[0].primary,
        &db.name,
        &user.name,
        &startup_params,
    )
    .await
    .map_err(|(code, msg)| Reject(code, msg))?;
    let shown_value = |k: &str| {
        shown
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    for (k, v) in &reported {
        let value =
            shown_value(k).unwrap_or_else(|| match startup_params.get(&k.to_ascii_lowercase()) {
                Some(params::Setting::Value(v)) => v.clone(),
                _ => v.clone(),
            });
        protocol::parameter_status(out, k, &value);
    }
    if !reported.iter().any(|(k, _)| k == "application_name") {
        if let Some(params::Setting::Value(v)) = startup_params.get("application_name") {
            protocol::parameter_status(out, "application_name", v);
        }
    }
    let (cancel_key, cancel_slot) = app.register_cancel();
    let app_name = match startup_params.get("application_name") {
        Some(params::Setting::Value(v)) => v.clone(),
        _ => String::new(),
    };
    let info = app.register_client(
        &user.name,
        &db.name,
        peer.to_string(),
        app_name,
        cancel_slot.clone(),
    );
    // Session mode: the session's one backend is checked out first and its own process id
    // reported (the session sends BackendKeyData and ReadyForQuery), as PostgreSQL would.
    let backend_pid = mode == crate::config::PoolMode::Session;
    if !backend_pid {
        protocol::backend_key_data(out, cancel_key.0, cancel_key.1);
        protocol::ready_for_query(out, b'I');
    }
    stream.write_all(out).await?;
    out.clear();
    let ctx = Box::new(session::SessionCtx {
        user: user.name.clone(),
        database: db.name.clone(),
        mode,
        pools,
        startup: startup_params,
        cancel_key,
        cancel_slot,
        config: cfg.clone(),
        db: runtime,
        info,
        pin: cfg.pin_for(&user, &db),
        cache_unnamed: cfg.cache_unnamed_for(&user, &db),
        backend_pid,
    });
    Ok((Login::Session(ctx), slot))
}
