//! The HTTP ingest API of `wasmhooks serve`.
//!
//! - `POST /v1/events`: one event. A pre event gets the verdict (200), a post
//!   event 202 once accepted. A malformed event gets 400 naming the field.
//! - `GET /v1/hooks`: status, version and last error of every hook, and what
//!   each gate covers; `GET /v1/hooks/set` and `GET /v1/engines`: on a
//!   hooks bucket, the set this engine serves, and every engine's.
//! - `PUT /v1/coverage/{reporter}`, `GET /v1/coverage`: what orchestrator
//!   plugins guard (see [`crate::coverage`]).
//! - `GET /v1/sources`: the sources the engine reads by itself (see
//!   [`crate::sources`]).
//! - `GET /v1/deliveries?state=pending|failed|dead|delivered&limit=N&hook=H&receiver=R`:
//!   queued deliveries, a page at a time (`after=CREATED_MS:ID`).
//! - `GET /v1/deliveries/{id}`: one delivery and its latest attempts.
//! - `POST /v1/deliveries/retry` with `{"id": "msg_…"}`, `{"all_dead": true}`
//!   or a filter (`state`, `hook`, `receiver`, `from_ms`, `to_ms`), and
//!   `dry_run` to count only: send deliveries again under their ids.
//! - `GET /v1/receivers`: each receiver's circuit, depth and last failures.
//! - `GET /v1/activity`: the last events and what each hook decided.
//! - `GET /v1/series`: the last hour per minute, for plots.
//! - `GET /metrics`: Prometheus metrics.
//! - `GET /healthz`: liveness; `GET /readyz`: readiness (`degraded` while
//!   the queue's backend keeps requests waiting).
//! - `GET /v1/openapi.json`: the OpenAPI document of all of the above,
//!   generated from the handlers (`routes.rs`).
//! - `GET /`: the operator console (`console.rs`).
//!
//! With [`require_token`], every route but `/healthz` and `/` wants
//! `Authorization: Bearer TOKEN`. [`serve`] serves it with connection
//! limits and header timeouts; the router itself reads each body within
//! [`HttpConfig::body_timeout_ms`](crate::config::HttpConfig::body_timeout_ms)
//! and refuses more than [`MAX_EVENT_BYTES`].

mod console;
mod listen;
mod openapi;
mod routes;
mod simulate;

pub use listen::{OVERFLOW_CONNECTIONS, serve};
pub use routes::MAX_LIST;

use crate::config::SettingsError;
use crate::engine::Engine;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest event body accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The API's routes and the console, ready to [`serve`] or to merge into a
/// bigger router.
pub fn router(engine: Engine) -> Router {
    let body_timeout = Duration::from_millis(engine.config().http.body_timeout_ms);
    let archive_on = engine.config().archive.is_some();
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::ingest))
        .routes(routes!(routes::hooks))
        .routes(routes!(routes::hook_set))
        .routes(routes!(routes::engines))
        .routes(routes!(routes::coverage))
        .routes(routes!(routes::coverage_put))
        .routes(routes!(routes::sources))
        .routes(routes!(routes::deliveries))
        .routes(routes!(routes::delivery))
        .routes(routes!(routes::retry))
        .routes(routes!(routes::receivers))
        .routes(routes!(routes::activity))
        .routes(routes!(simulate::simulate))
        .routes(routes!(routes::series))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(openapi_json))
        .routes(routes!(console::page))
        .split_for_parts();
    utoipa::Modify::modify(&openapi::Shared, &mut doc);
    let doc: Arc<str> = doc
        .to_pretty_json()
        .expect("the document serializes")
        .into();
    router
        .layer(Extension(OpenApiJson(doc)))
        .layer(axum::middleware::from_fn(move |request, next| {
            read_body(body_timeout, archive_on, request, next)
        }))
        .with_state(engine)
}

/// The OpenAPI document, serialized once.
#[derive(Clone)]
struct OpenApiJson(Arc<str>);

/// This API's OpenAPI 3.1 document: every route, parameter, body, status
/// and error shape.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi_json(Extension(OpenApiJson(doc)): Extension<OpenApiJson>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// Reads the request's body within `timeout` and up to [`MAX_EVENT_BYTES`]
/// before any handler runs: one place for both limits, so a client that
/// announces a large body, or sends it slowly, holds nothing for long. A
/// simulation's upload is read only once it may run (`archive_on`, and no
/// other running).
async fn read_body(timeout: Duration, archive_on: bool, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    // A hook's `.wasm` (Go and JavaScript ones weigh megabytes) for a
    // simulation, read only in its turn; an event, or a few fields,
    // anywhere else.
    let max = if parts.uri.path() == "/v1/simulate" && parts.method == axum::http::Method::POST {
        match simulate::turn(archive_on) {
            Ok(turn) => parts.extensions.insert(turn),
            Err(refused) => return close(refused.response()),
        };
        simulate::MAX_HOOK_BYTES
    } else {
        MAX_EVENT_BYTES
    };
    let too_large = || {
        close(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body here is at most {max} bytes"),
        ))
    };
    let announced = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let limited = http_body_util::Limited::new(body, max);
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

/// Puts `router` behind a bearer token: every route but `/healthz`, `/readyz` and the
/// console's page (which asks for the token and sends it) answers 401 unless the request has `Authorization: Bearer TOKEN`. Refuses a
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
            let allowed = openapi::OPEN_PATHS.contains(&request.uri().path())
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

pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
