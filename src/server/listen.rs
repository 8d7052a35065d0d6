//! Connections: how many, how long a client may take to speak, and a
//! graceful stop. What `axum::serve` leaves to the operator.

use crate::config::HttpConfig;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections past [`HttpConfig::max_connections`] that still get an
/// answer (`/healthz`, or 503 for the rest) before they are closed.
pub const OVERFLOW_CONNECTIONS: usize = 64;
/// How long an overflow connection has to send its request's headers.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` that is not about one connection (out of
/// file descriptors, say), so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` under the limits of `http` until `shutdown`
/// resolves; then stops accepting, lets the requests in progress finish
/// (idle connections are closed), and returns once every connection is
/// closed.
///
/// HTTP/1.1. A connection that does not send its request's headers within
/// [`HttpConfig::header_timeout_ms`] (counted from when it opened or got
/// its previous answer) is closed. Past [`HttpConfig::max_connections`],
/// up to [`OVERFLOW_CONNECTIONS`] more get one answer each (`/healthz` as
/// usual, so a liveness probe still passes; anything else 503 with
/// `Retry-After`) and are closed; beyond those a connection is closed as
/// soon as it is accepted. The body timeout is [`router`](super::router)'s.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    http: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let served = Arc::new(Semaphore::new(http.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let busy = busy(http.max_connections);
    let header_timeout = Duration::from_millis(http.header_timeout_ms);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!("cannot accept connections: {e}; trying again");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (service, permit, keep_alive, header_timeout) =
            if let Ok(permit) = served.clone().try_acquire_owned() {
                (app.clone(), permit, true, header_timeout)
            } else if let Ok(permit) = overflow.clone().try_acquire_owned() {
                let timeout = OVERFLOW_HEADER_TIMEOUT.min(header_timeout);
                (busy.clone(), permit, false, timeout)
            } else {
                continue;
            };
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(keep_alive)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that went away, or timed out: nothing to report.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What an overflow connection is served: `/healthz`, and 503 for the rest.
fn busy(max: usize) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .fallback(move || async move {
            let mut response = super::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{max} connections are open (http.max_connections): try again shortly, \
                     reusing a connection if you can"
                ),
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            response.into_response()
        })
}

/// Errors of `accept` about the one connection (reset before it was taken):
/// the next `accept` is fine.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}
