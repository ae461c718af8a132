//! Client connections: from accept to an authenticated session.
//!
//! Owns: the startup phase (SSL/GSSENC refusal, CancelRequest, protocol version negotiation),
//! client authentication against `[[users]]` per `auth_type`, the login reply (ParameterStatus,
//! BackendKeyData) and handing the connection to the session state machine in [`session`].
//!
//! Must not: touch server connections except to learn a backend's reported parameters; all
//! statement traffic belongs to the session.

pub mod budget;
mod fanout;
mod forward;
pub mod prepared;
mod reply;
mod route;
mod session;
pub mod tracker;

pub use fanout::{merge_responses, merge_tags};
pub use route::{choose_role, Role, RoleContext};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::App;
use crate::auth::{self, ScramServer};
use crate::config::{AuthType, PasswordKind};
use crate::params;
use crate::protocol::{self, Startup};

/// How long a client may take to send its startup packet and authenticate.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps the client count right however the connection ends.
pub struct ClientGuard(pub Arc<App>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
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

/// Serve one accepted client connection until it ends.
pub async fn handle(app: Arc<App>, mut stream: TcpStream, over_limit: bool) {
    let _ = stream.set_nodelay(true);
    let mut out = BytesMut::new();
    // Boxed: the login state machine (SCRAM, startup parsing) is large and is not needed once
    // the session runs, so it must not inflate every idle client's task.
    let login = tokio::time::timeout(
        LOGIN_TIMEOUT,
        Box::pin(login(&app, &mut stream, &mut out, over_limit)),
    )
    .await;
    // Login buffers are not kept for the life of the session (idle clients stay small).
    let login = match login {
        Ok(Ok(Some(l))) => {
            drop(out);
            l
        }
        other => {
            match other {
                Ok(Err(Reject(code, msg))) => {
                    tracing::debug!(code, %msg, "login rejected");
                    protocol::error_response(&mut out, "FATAL", code, &msg);
                    let _ = stream.write_all(&out).await;
                }
                Err(_) => {
                    protocol::error_response(&mut out, "FATAL", "08006", "login timed out");
                    let _ = stream.write_all(&out).await;
                }
                _ => {}
            }
            return;
        }
    };
    match Some(login) {
        Some(Login::Session(ctx)) => session::run(app, stream, *ctx).await,
        Some(Login::Admin { user, read_only }) => {
            crate::admin::serve(app, stream, user, read_only).await
        }
        None => {}
    }
}

async fn read_startup_packet(stream: &mut TcpStream) -> Result<Vec<u8>, Reject> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = i32::from_be_bytes(len);
    if !(8..=protocol::MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(Reject(
            "08P01",
            format!("invalid startup packet length {len}"),
        ));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Read one message of the authentication exchange; it must be a 'p' message.
async fn read_password_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, Reject> {
    loop {
        if let Some(f) = protocol::split_frame(buf, protocol::MAX_STARTUP_LEN)? {
            if f[0] != b'p' {
                return Err(Reject(
                    "08P01",
                    format!(
                        "expected password response, got message type {:?}",
                        f[0] as char
                    ),
                ));
            }
            return Ok(f);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(Reject("08006", "client closed the connection".into()));
        }
    }
}

fn auth_failed(user: &str) -> Reject {
    Reject(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

async fn login(
    app: &Arc<App>,
    stream: &mut TcpStream,
    out: &mut BytesMut,
    over_limit: bool,
) -> Result<Option<Login>, Reject> {
    let (minor, startup) = loop {
        let body = read_startup_packet(stream).await?;
        match protocol::parse_startup(&body)? {
            Startup::Ssl | Startup::GssEnc => stream.write_all(b"N").await?,
            Startup::Cancel { pid, secret } => {
                if let Some(t) = app.cancel_target(pid, secret) {
                    if let Err(e) = crate::server::send_cancel(&t.addr, t.pid, t.secret).await {
                        tracing::warn!(error = %e, "forwarding cancel request failed");
                    }
                }
                return Ok(None);
            }
            Startup::Startup { minor, params } => break (minor, params),
        }
    };
    if over_limit {
        return Err(Reject("53300", "sorry, too many clients already".into()));
    }
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
    if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(Reject(
            "08P01",
            "replication connections are not supported by pgvane".into(),
        ));
    }
    let cfg = app.config();
    let Some(user) = cfg.user(&user_name).cloned() else {
        return Err(Reject(
            "28000",
            format!("role \"{user_name}\" does not exist"),
        ));
    };
    authenticate(app, stream, out, &user, cfg.general.auth_type).await?;
    protocol::auth_ok(out);

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
        return Ok(Some(Login::Admin {
            user: user.name.clone(),
            read_only: !admin,
        }));
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
    for (k, v) in &reported {
        let value = match startup_params.get(&k.to_ascii_lowercase()) {
            Some(params::Setting::Value(v)) => v.as_str(),
            _ => v.as_str(),
        };
        protocol::parameter_status(out, k, value);
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
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let info = app.register_client(&user.name, &db.name, peer, app_name, cancel_slot.clone());
    protocol::backend_key_data(out, cancel_key.0, cancel_key.1);
    protocol::ready_for_query(out, b'I');
    stream.write_all(out).await?;
    out.clear();
    Ok(Some(Login::Session(Box::new(session::SessionCtx {
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
    }))))
}

async fn authenticate(
    app: &Arc<App>,
    stream: &mut TcpStream,
    out: &mut BytesMut,
    user: &crate::config::User,
    auth_type: AuthType,
) -> Result<(), Reject> {
    let mut buf = BytesMut::new();
    let stored = user.password.clone().unwrap_or_default();
    match auth_type {
        AuthType::Trust => Ok(()),
        AuthType::Plain => {
            protocol::auth_cleartext(out);
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let mut b = protocol::body(&f);
            let pw = protocol::read_cstr(&mut b)?;
            if user.password.is_some() && auth::cleartext_verify(&user.name, &stored, pw) {
                Ok(())
            } else {
                Err(auth_failed(&user.name))
            }
        }
        AuthType::Md5 => {
            let hash = match user.password_kind() {
                Some(PasswordKind::Plain(p)) => auth::md5_stored(&user.name, &p),
                Some(PasswordKind::Md5Hash(h)) => h,
                _ => return Err(auth_failed(&user.name)),
            };
            let salt = auth::random_md5_salt();
            protocol::auth_md5(out, salt);
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let mut b = protocol::body(&f);
            let resp = protocol::read_cstr(&mut b)?;
            if auth::md5_verify(&hash, salt, resp) {
                Ok(())
            } else {
                Err(auth_failed(&user.name))
            }
        }
        AuthType::ScramSha256 => {
            let Some(verifier) = app.scram_verifier(user) else {
                return Err(auth_failed(&user.name));
            };
            protocol::auth_sasl(out, "SCRAM-SHA-256");
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let (mech, data) = protocol::parse_sasl_initial(&f)?;
            if mech != b"SCRAM-SHA-256" {
                return Err(Reject(
                    "28000",
                    "SASL authentication mechanism not supported: use SCRAM-SHA-256".into(),
                ));
            }
            let mut server = ScramServer::new((*verifier).clone());
            let first = server
                .handle_client_first(data)
                .map_err(|_| auth_failed(&user.name))?;
            protocol::auth_sasl_continue(out, &first);
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let fin = server
                .handle_client_final(protocol::body(&f))
                .map_err(|_| auth_failed(&user.name))?;
            protocol::auth_sasl_final(out, &fin);
            Ok(())
        }
    }
}
