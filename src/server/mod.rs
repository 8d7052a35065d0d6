//! The HTTP ingest API of `wasmhooks serve`.
//!
//! - `POST /v1/events`: one event. A pre event gets the verdict (200), a post
//!   event 202 once accepted. A malformed event gets 400 naming the field.
//! - `GET /v1/hooks`: status, version and last error of every hook.
//! - `GET /v1/deliveries?state=pending|failed|dead&limit=N`: queued deliveries.
//! - `POST /v1/deliveries/retry` with `{"id": "msg_…"}` or `{"all_dead": true}`:
//!   send dead letters again.
//! - `GET /metrics`: Prometheus metrics.
//! - `GET /healthz`: liveness.
//!
//! With [`require_token`], every route but `/healthz` wants
//! `Authorization: Bearer TOKEN`. [`serve`] serves it with connection
//! limits and header timeouts; the router itself reads each body within
//! [`HttpConfig::body_timeout_ms`](crate::config::HttpConfig::body_timeout_ms)
//! and refuses more than [`MAX_EVENT_BYTES`].

mod listen;

pub use listen::{OVERFLOW_CONNECTIONS, serve};

use crate::{Engine, Error, Event, Filter, Phase, Retry, SettingsError};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Largest event body accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The API's routes, ready to [`serve`] or to merge into a bigger router.
pub fn router(engine: Engine) -> Router {
    let body_timeout = Duration::from_millis(engine.config().http.body_timeout_ms);
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/v1/hooks", get(hooks))
        .route("/v1/deliveries", get(deliveries))
        .route("/v1/deliveries/retry", post(retry))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn(move |request, next| {
            read_body(body_timeout, request, next)
        }))
        .with_state(engine)
}

/// Reads the request's body within `timeout` and up to [`MAX_EVENT_BYTES`]
/// before any handler runs: one place for both limits, so a client that
/// announces a large body, or sends it slowly, holds nothing for long.
async fn read_body(timeout: Duration, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let too_large = || {
        close(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body is at most {MAX_EVENT_BYTES} bytes"),
        ))
    };
    let announced = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_EVENT_BYTES as u64) {
        return too_large();
    }
    let limited = http_body_util::Limited::new(body, MAX_EVENT_BYTES);
    let bytes = match tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return close(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ));
        }
        Err(_elapsed) => {
            return close(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {timeout:?} (http.body_timeout_ms)"
                ),
            ));
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `response`, with the connection closed after it: what is left of the
/// request's body is not worth reading.
fn close(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Shortest API token [`require_token`] accepts.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Whether `token` will do as the API token: at least [`MIN_TOKEN_CHARS`]
/// characters, no whitespace.
pub fn check_token(token: &str) -> Result<(), SettingsError> {
    if token.chars().count() < MIN_TOKEN_CHARS || token.contains(char::is_whitespace) {
        return Err(SettingsError::Token {
            min: MIN_TOKEN_CHARS,
        });
    }
    Ok(())
}

/// Puts `router` behind a bearer token: every route but `/healthz` answers
/// 401 unless the request has `Authorization: Bearer TOKEN`. Refuses a
/// token shorter than [`MIN_TOKEN_CHARS`] or with whitespace in it.
pub fn require_token(router: Router, token: &str) -> Result<Router, SettingsError> {
    check_token(token)?;
    // Compared as digests, so the time taken says nothing about the token.
    let expected: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    Ok(router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| async move {
            let given = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let allowed = request.uri().path() == "/healthz"
                || given
                    .is_some_and(|t| <[u8; 32]>::from(Sha256::digest(t.as_bytes())) == expected);
            if allowed {
                next.run(request).await
            } else {
                let mut response = error(
                    StatusCode::UNAUTHORIZED,
                    "this API wants `Authorization: Bearer TOKEN`, with the token \
                     `wasmhooks serve` was started with (--token or WASMHOOKS_TOKEN)"
                        .into(),
                );
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                response
            }
        },
    )))
}

async fn ingest(State(engine): State<Engine>, body: Bytes) -> Response {
    let event = match Event::from_json(&body) {
        Ok(event) => event,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let result = match event.phase() {
        Phase::Pre => engine
            .pre(event)
            .await
            .map(|verdict| Json(verdict).into_response()),
        Phase::Post => engine
            .post(event)
            .await
            .map(|()| (StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response()),
    };
    result.unwrap_or_else(|e: Error| {
        // The queue could not take it: the sender should retry later.
        let status = match e {
            Error::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, e.to_string())
    })
}

async fn hooks(State(engine): State<Engine>) -> Response {
    Json(engine.hooks()).into_response()
}

async fn metrics(State(engine): State<Engine>) -> Response {
    match engine.metrics().await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    state: Filter,
    limit: Option<usize>,
}

/// Most deliveries one `GET /v1/deliveries` lists.
pub const MAX_LIST: usize = 1000;

async fn deliveries(State(engine): State<Engine>, Query(q): Query<ListQuery>) -> Response {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be within 1..={MAX_LIST}"),
        );
    }
    match engine.deliveries(q.state, limit).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    id: Option<String>,
    #[serde(default)]
    all_dead: bool,
}

async fn retry(State(engine): State<Engine>, Json(r): Json<RetryRequest>) -> Response {
    let which = match (r.id, r.all_dead) {
        (Some(id), false) => Retry::Id(id),
        (None, true) => Retry::AllDead,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give either \"id\" or \"all_dead\": true".into(),
            );
        }
    };
    match engine.retry(which.clone()).await {
        Ok(0) if matches!(which, Retry::Id(_)) => {
            error(StatusCode::NOT_FOUND, "no dead letter with that id".into())
        }
        Ok(n) => Json(json!({ "requeued": n })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
