//! Accepting client connections and shutting down gracefully.
//!
//! Owns: the listening socket, registering each accepted socket as a pending login (which may
//! push the oldest pending one out, see `max_pending_logins`), spawning one task per client,
//! and the shutdown sequence (stop accepting, let sessions finish their
//! transactions within `shutdown_timeout`, then exit).
//!
//! Must not: read or write client data itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::app::App;
use crate::client;

/// Bind the configured listen address (SO_REUSEADDR; SO_REUSEPORT so a new process can
/// listen beside a draining one).
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Accept clients until shutdown is signalled, then drain.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let mut shutdown = app.shutdown_rx.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => {
                    // Logged-in clients are counted (max_client_conn) when their login
                    // succeeds; until then the socket is a pending login.
                    let ticket = app.begin_login(app.config().general.max_pending_logins);
                    let app = app.clone();
                    tokio::spawn(client::handle(app, stream, ticket));
                }
                Err(e) => {
                    static ACCEPT: crate::logging::RateLimit =
                        crate::logging::RateLimit::per_second(1);
                    if let Some(suppressed) = ACCEPT.check() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let timeout = app.config().general.shutdown_timeout;
    let started = Instant::now();
    tracing::info!(
        clients = app.client_count(),
        "shutting down: no new connections; waiting for transactions to finish"
    );
    while app.client_count() > 0 && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if app.client_count() > 0 {
        tracing::warn!(
            clients = app.client_count(),
            "shutdown_timeout reached; closing remaining clients"
        );
    }
    for p in app.all_pools() {
        p.close_idle();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}
