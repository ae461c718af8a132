//! The HTTP endpoint on `metrics_addr`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up) and `/readyz` (listening and every database's primaries reachable).
//!
//! hyper 1 with HTTP/1.1 only, a short header read timeout and one task per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Registry, TextEncoder};

use crate::app::App;

use super::AppCollector;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for a TCP connect to a primary nobody monitors.
const CONNECT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Bind `addr` (SO_REUSEPORT, like the client listener, so a restarting pgvane can bind
/// beside the draining one) and serve the endpoints in a background task.
pub async fn serve(app: Arc<App>, addr: &str) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = crate::listener::bind(addr)?;
    let registry = Registry::new();
    registry
        .register(Box::new(AppCollector::new(&app)))
        .map_err(std::io::Error::other)?;
    let registry = Arc::new(registry);
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let app = app.clone();
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(handle(&app, &registry, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn handle(
    app: &Arc<App>,
    registry: &Registry,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => match render(registry) {
            Ok(body) => text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            ),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
        },
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let (ready, report) = readiness(app).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, report)
        }
        "/" => text(
            StatusCode::OK,
            PLAIN,
            "pgvane: /metrics (Prometheus), /healthz (process up), /readyz (ready for traffic)\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

/// The Prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    TextEncoder::new().encode_to_string(&registry.gather())
}

/// Ready when listening for clients, not shutting down, and the primary of every shard of every database is
/// reachable: by the replication monitor's last probe where one runs, else by a TCP connect
/// with a short timeout. Returns the verdict and a line per primary.
pub async fn readiness(app: &App) -> (bool, String) {
    if app.is_shutting_down() {
        return (false, "not ready: shutting down\n".into());
    }
    if !app.admin.is_listening() {
        return (false, "not ready: not listening for clients yet\n".into());
    }
    let cfg = app.config();
    let runtimes = app.all_dbs();
    let mut checks = tokio::task::JoinSet::new();
    for db in &cfg.databases {
        let rt = runtimes.iter().find(|r| r.name == db.name);
        for (i, sh) in db.shards.iter().enumerate() {
            let addr = sh.primary.addr();
            let monitored = rt
                .and_then(|r| r.shards.get(i))
                .map(|s| s.state.primary.clone())
                .filter(|p| p.addr == addr && p.probes() > 0);
            let (name, host, port) = (db.name.clone(), sh.primary.host.clone(), sh.primary.port);
            checks.spawn(async move {
                let ok = match monitored {
                    Some(p) => p.healthy(),
                    None => matches!(
                        tokio::time::timeout(
                            CONNECT_CHECK_TIMEOUT,
                            tokio::net::TcpStream::connect((host.as_str(), port))
                        )
                        .await,
                        Ok(Ok(_))
                    ),
                };
                (name, i, addr, ok)
            });
        }
    }
    let mut results = Vec::new();
    while let Some(r) = checks.join_next().await {
        if let Ok(r) = r {
            results.push(r);
        }
    }
    results.sort();
    let ready = results.iter().all(|r| r.3);
    let mut report = String::from(if ready { "ready\n" } else { "not ready\n" });
    for (db, shard, addr, ok) in results {
        report.push_str(&format!(
            "{db} shard {shard} primary {addr}: {}\n",
            if ok { "ok" } else { "unreachable" }
        ));
    }
    (ready, report)
}
