//! The HTTP ingest API of `wasmhooks serve`.
//!
//! - `POST /v1/events`: one event. A pre event gets the verdict (200), a post
//!   event 202 once accepted. A malformed event gets 400 naming the field.
//! - `GET /v1/hooks`: status, version and last error of every hook.
//! - `GET /healthz`: liveness.

use crate::{Engine, Error, Event, Phase};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

/// Largest event body accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The API's routes, ready to serve or to merge into a bigger router.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/v1/hooks", get(hooks))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .with_state(engine)
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
    result.unwrap_or_else(|e: Error| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn hooks(State(engine): State<Engine>) -> Response {
    Json(engine.hooks()).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
