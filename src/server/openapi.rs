//! The OpenAPI document of the HTTP API (`GET /v1/openapi.json`).
//!
//! Paths come from the handlers' `#[utoipa::path]` attributes as the
//! router is built (`routes.rs`), and schemas from the types they return,
//! so the document cannot drift from the code. What every route shares
//! (the bearer token's 401, the connection limit's 503) is added here, in
//! one place.

use crate::queue::DeliveryState;
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's fixed part: what the routes do not say themselves.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wasmhooks",
        description = "The HTTP API of `wasmhooks serve`: events in, the hooks' status, the delivery queue, metrics. Started with a token (`--token`), every route but `/healthz`, `/readyz` and the console (`/`) wants `Authorization: Bearer TOKEN`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "events", description = "Events from the orchestrator, and what the hooks decided"),
        (name = "hooks", description = "The hooks folder's hooks"),
        (name = "deliveries", description = "The durable delivery queue, dead letters and receivers"),
        (name = "operations", description = "Metrics, liveness, this document and the console"),
    ),
)]
pub(super) struct ApiDoc;

/// Routes open without the token.
pub(super) const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/"];

/// Adds what every route shares; applied once the routes are in (see
/// [`router`](super::router)).
pub(super) struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token `wasmhooks serve` was started with (--token or WASMHOOKS_TOKEN)",
                    ))
                    .build(),
            ),
        );
        let error = |description: &str| -> RefOr<Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ApiError")))
                        .build(),
                )
                .build()
                .into()
        };
        let each = |op: &mut Operation, path: &str| {
            let responses = &mut op.responses.responses;
            if path != "/healthz" {
                responses.entry("503".into()).or_insert_with(|| {
                    error(
                        "Too many connections (http.max_connections): try again after Retry-After",
                    )
                });
            }
            if !OPEN_PATHS.contains(&path) {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                responses.insert(
                    "401".into(),
                    error("Started with a token, and this request did not carry it"),
                );
                // Every body is read within `http.body_timeout_ms`.
                if op.request_body.is_some() {
                    responses.insert(
                        "408".into(),
                        error("The body did not arrive within http.body_timeout_ms"),
                    );
                }
            } else {
                op.security = Some(vec![SecurityRequirement::default()]);
            }
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                each(op, path);
            }
        }
    }
}

/// An error: what went wrong and, where it helps, what to do.
#[derive(Serialize, ToSchema)]
pub(super) struct ApiError {
    /// The message.
    pub error: String,
}

/// A post event was accepted.
#[derive(Serialize, ToSchema)]
pub(super) struct Accepted {
    /// Always true.
    pub accepted: bool,
}

/// Which deliveries to send again, each under its `webhook-id` with a fresh
/// retry schedule: one by id, every dead letter, or those a filter matches.
/// With `dry_run`, nothing changes: the answer says how many would be.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum RetryRequest {
    /// One delivery.
    One(RetryOne),
    /// Every dead letter.
    All(RetryAll),
    /// Those a filter matches.
    Matching(RetryMatching),
}

/// One delivery: a dead letter, a delivered one (within
/// `delivery.history_hours`), or a pending one that failed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryOne {
    /// Its `webhook-id`.
    pub id: String,
    /// Count only.
    #[serde(default)]
    pub dry_run: bool,
}

/// Every dead letter.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryAll {
    /// `true`.
    #[schema(schema_with = always_true)]
    pub all_dead: bool,
    /// Count only.
    #[serde(default)]
    pub dry_run: bool,
}

/// The deliveries in `state`, of a hook, to a receiver, queued within a
/// time range.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryMatching {
    /// `dead`, `delivered` (within `delivery.history_hours`), or `failed`
    /// (pending, failed at least once; `pending` means the same here).
    #[schema(inline)]
    pub state: DeliveryState,
    /// Only the deliveries this hook asked for.
    pub hook: Option<String>,
    /// Only the deliveries to this receiver, as `host:port`.
    pub receiver: Option<String>,
    /// Only those queued at or after this time (Unix ms).
    #[schema(minimum = 0, maximum = 999_999_999_999_999_i64)]
    pub from_ms: Option<u64>,
    /// Only those queued before this time (Unix ms).
    #[schema(minimum = 0, maximum = 999_999_999_999_999_i64)]
    pub to_ms: Option<u64>,
    /// Count only.
    #[serde(default)]
    pub dry_run: bool,
}

/// The schema of a boolean that must be `true`.
fn always_true() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Boolean)
        .enum_values(Some([true]))
        .build()
}

/// How many deliveries were made pending again.
#[derive(Serialize, ToSchema)]
pub(super) struct Requeued {
    /// How many are pending again (with `dry_run`: would be).
    pub requeued: usize,
    /// Whether this only counted them.
    pub dry_run: bool,
}

/// An event, as Xen Orchestra's web-hook plugin sends it. Fields not listed
/// are kept and handed to hooks.
///
/// Documentation only: the handler parses the body with
/// [`Event::from_json`](crate::Event::from_json), whose checks this
/// mirrors.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventBody {
    /// Shared by the pre and the post event of one call; 1 to 256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    call_id: String,
    /// The API method, e.g. `vm.start`; 1 to 256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    method: String,
    /// `pre` (before the operation; hooks may veto it), `post`, or
    /// `observed` (a change reported after the fact). Never `system`:
    /// those come from the engine itself.
    #[serde(rename = "type")]
    phase: EventType,
    /// Milliseconds since the Unix epoch (for a post event, its end).
    timestamp: u64,
    /// The user who called the method.
    user_id: Option<String>,
    /// The user's name.
    user_name: Option<String>,
    /// The user's address.
    user_ip: Option<String>,
    /// The method's parameters.
    params: Option<serde_json::Value>,
    /// Post events: how long the call took, in milliseconds.
    duration: Option<u64>,
    /// Post events: what the call returned.
    result: Option<serde_json::Value>,
    /// Post events: why the call failed.
    error: Option<CallFailure>,
}

/// The phases a caller may send.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub(super) enum EventType {
    /// Before the operation.
    Pre,
    /// After it.
    Post,
    /// A change reported after the fact.
    Observed,
}

/// Why an orchestrator call failed, as the orchestrator serialized its
/// error: usually `code`, `message`, `name` and `stack`, handed to hooks as
/// they are.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct CallFailure {
    /// Its error code.
    code: Option<serde_json::Value>,
    /// Its message.
    message: Option<serde_json::Value>,
    /// Its class.
    name: Option<serde_json::Value>,
    /// Its stack trace.
    stack: Option<serde_json::Value>,
}
