//! The API's handlers. Each one's `#[utoipa::path]` is its entry in the
//! OpenAPI document, next to the code it describes, so the two change
//! together.

use super::error;
use super::openapi::{Accepted, ApiError, EventBody, Requeued, RetryRequest};
use crate::activity::{EventActivity, MAX_EVENTS, SeriesView};
use crate::coverage::{CoverageReport, ReporterStatus};
use crate::engine::Engine;
use crate::engine::ReceiverStatus;
use crate::error::Error;
use crate::event::{Event, Phase};
use crate::hooks::HookStatus;
use crate::hooks::bucket::{EngineReport, SetState};
use crate::queue::{DeliveryDetail, DeliveryInfo, DeliveryQuery};
use crate::queue::{DeliveryFilter, DeliveryState, QueueError, Replay};
use crate::run::Verdict;
use crate::sources::SourceStatus;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;

/// Most deliveries one `GET /v1/deliveries` lists.
pub const MAX_LIST: usize = 1000;

/// Accepts one event from the orchestrator.
///
/// A pre event is run through the hooks subscribed to it and answered with
/// the verdict. A post event is answered once it is committed to the
/// durable queue; its hooks and deliveries run in the background. The
/// same event (method, `callId` and phase) sent again within the engine's
/// `dedup_window_secs` gets the first answer and no second set of
/// deliveries. With tracing on, a W3C `traceparent` header is continued:
/// the event's spans join the caller's trace.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    params(("traceparent" = Option<String>, Header, description = "A W3C trace context (`00-TRACEID-PARENTID-FLAGS`): with tracing on, the event's spans continue this trace; a malformed one is ignored", example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
    request_body(content = EventBody, description = "The orchestrator's event (Xen Orchestra's web-hook payload), at most 1 MiB"),
    responses(
        (status = 200, description = "A pre event's verdict", body = Verdict),
        (status = 202, description = "A post or observed event, committed to the durable queue", body = Accepted),
        (status = 400, description = "A malformed event: the error names the field", body = ApiError),
        (status = 413, description = "A body larger than 1 MiB", body = ApiError),
        (status = 500, description = "The engine failed on it (a bug): send it again", body = ApiError),
        (status = 503, description = "The queue cannot take it now (a full disk, NATS unreachable), or too many connections: send it again later", body = ApiError),
    )
)]
pub(super) async fn ingest(
    State(engine): State<Engine>,
    Traceparent(traceparent): Traceparent,
    body: Bytes,
) -> Response {
    let mut event = match Event::from_json(&body) {
        Ok(event) => event,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // The caller's trace, continued by the event's spans (ignored if
    // malformed, as the W3C asks).
    if let Some(traceparent) = traceparent
        && let Ok(traceparent) = traceparent.to_str()
    {
        event = event.with_traceparent(traceparent);
    }
    let result = match event.phase() {
        Phase::Pre => engine
            .pre(event)
            .await
            .map(|verdict| Json(verdict).into_response()),
        Phase::Post | Phase::Observed => engine
            .post(event)
            .await
            .map(|()| (StatusCode::ACCEPTED, Json(Accepted { accepted: true })).into_response()),
        Phase::System => {
            return error(
                StatusCode::BAD_REQUEST,
                "event field `type`: \"system\" events come from the engine itself; \
                 send \"pre\", \"post\" or \"observed\""
                    .into(),
            );
        }
    };
    result.unwrap_or_else(|e: Error| {
        // The queue could not take it: the sender should retry later.
        let status = match e {
            Error::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            // A method of the engine's own events, posed as by a caller.
            Error::Event(_) | Error::WrongPhase { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, e.to_string())
    })
}

/// A request's `traceparent` header, taken only with tracing on: the rest of
/// the time an event costs no more for carrying one.
pub(super) struct Traceparent(Option<axum::http::HeaderValue>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Traceparent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let wanted = crate::trace::enabled();
        let header = wanted.then(|| parts.headers.get(crate::trace::TRACEPARENT).cloned());
        Ok(Traceparent(header.flatten()))
    }
}

/// Every hook in the hooks folder: live or failed (with the file, stage
/// and reason), its version, subscription and counters.
#[utoipa::path(
    get,
    path = "/v1/hooks",
    tag = "hooks",
    responses((status = 200, description = "Every hook, by name", body = Vec<HookStatus>))
)]
pub(super) async fn hooks(State(engine): State<Engine>) -> Json<Vec<HookStatus>> {
    Json(engine.hooks())
}

/// On an engine that loads its hooks from a shared bucket (`[hooks_bucket]`):
/// the set it serves and the last it refused.
#[utoipa::path(
    get,
    path = "/v1/hooks/set",
    tag = "hooks",
    responses(
        (status = 200, description = "The set serving, and the last refused", body = SetState),
        (status = 404, description = "The hooks come from a folder, not a bucket", body = ApiError),
    )
)]
pub(super) async fn hook_set(State(engine): State<Engine>) -> Response {
    match engine.hook_set() {
        Some(set) => Json(set).into_response(),
        None => not_on_a_bucket(),
    }
}

/// On an engine that loads its hooks from a shared bucket: every engine
/// on that bucket, the set it serves, the last it refused, and each live
/// hook's version, as each engine reported it (every 10 s; `stale` after
/// 30 s without a word). Any engine answers for all.
#[utoipa::path(
    get,
    path = "/v1/engines",
    tag = "hooks",
    responses(
        (status = 200, description = "Every engine on the bucket", body = Vec<EngineReport>),
        (status = 404, description = "The hooks come from a folder, not a bucket", body = ApiError),
        (status = 503, description = "The bucket cannot be read now", body = ApiError),
    )
)]
pub(super) async fn engines(State(engine): State<Engine>) -> Response {
    match engine.engines().await {
        Some(Ok(engines)) => Json(engines).into_response(),
        Some(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        None => not_on_a_bucket(),
    }
}

fn not_on_a_bucket() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this engine loads its hooks from a folder; sets and engines are for a hooks bucket \
         (`[hooks_bucket]`, `wasmhooks serve --hooks nats://…`)"
            .into(),
    )
}

/// What an orchestrator plugin guards: every entry point it knows, with
/// whether a call there waits for the verdict. Replaces what the same
/// reporter said before, and holds for the report's `ttl_secs`; each gate's
/// coverage in `GET /v1/hooks` is matched against it. The XO plugin sends
/// it as `xo:HOSTNAME` at every refresh.
#[utoipa::path(
    put,
    path = "/v1/coverage/{reporter}",
    tag = "hooks",
    params(("reporter" = String, Path, description = "Who reports: 1 to 64 of A-Z a-z 0-9 . _ : @ -", pattern = "^[A-Za-z0-9._:@-]{1,64}$", example = "xo:xoa-prod")),
    request_body = CoverageReport,
    responses(
        (status = 204, description = "Kept"),
        (status = 400, description = "Not a report, or a field missing, too long or out of range: the error names it", body = ApiError),
        (status = 413, description = "A body larger than 1 MiB", body = ApiError),
    )
)]
pub(super) async fn coverage_put(
    State(engine): State<Engine>,
    Path(reporter): Path<String>,
    body: Bytes,
) -> Response {
    let report: CoverageReport = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a coverage report: {e}"),
            );
        }
    };
    match engine.put_coverage(&reporter, report) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Every orchestrator plugin that reported what it guards: when, whether
/// its report still holds, and how many entry points it guards.
#[utoipa::path(
    get,
    path = "/v1/coverage",
    tag = "hooks",
    responses((status = 200, description = "Reporters, by name", body = Vec<ReporterStatus>))
)]
pub(super) async fn coverage(State(engine): State<Engine>) -> Json<Vec<ReporterStatus>> {
    Json(engine.coverage())
}

/// Every source the engine reads by itself (`[sources]` in its config,
/// such as XO's event stream): its state, last error, and counts.
#[utoipa::path(
    get,
    path = "/v1/sources",
    tag = "events",
    responses((status = 200, description = "Sources, by name", body = Vec<SourceStatus>))
)]
pub(super) async fn sources(State(engine): State<Engine>) -> Json<Vec<SourceStatus>> {
    Json(engine.sources())
}

/// Which deliveries `GET /v1/deliveries` lists.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// `pending` (waiting, retries included), `failed` (pending, failed at
    /// least once), `dead` (dead letters) or `delivered` (within
    /// `delivery.history_hours`).
    #[serde(default)]
    #[param(inline)]
    state: DeliveryState,
    /// At most this many, from 1 to 1000.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<usize>,
    /// Only the deliveries this hook asked for.
    hook: Option<String>,
    /// Only the deliveries to this receiver, as `host:port`.
    receiver: Option<String>,
    /// Only those queued at or after this time (Unix ms).
    #[param(minimum = 0, maximum = 999_999_999_999_999_i64)]
    from_ms: Option<u64>,
    /// Only those queued before this time (Unix ms).
    #[param(minimum = 0, maximum = 999_999_999_999_999_i64)]
    to_ms: Option<u64>,
    /// The next page: the previous page's last row, as `CREATED_MS:ID`
    /// (its `created_ms` and `id`).
    #[param(pattern = "^[0-9]{1,15}:.+$", example = "1764338400123:msg_2f9c…")]
    after: Option<String>,
}

const BAD_CURSOR: &str =
    "after is the previous page's last row as CREATED_MS:ID, e.g. 1764338400123:msg_2f9c";

/// Queued deliveries, oldest first (no bodies): one page, filtered by
/// state, hook, receiver and when they were queued.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    params(ListParams),
    responses(
        (status = 200, description = "One page of deliveries, oldest first", body = Vec<DeliveryInfo>),
        (status = 400, description = "A parameter out of range or unknown", body = ApiError),
        (status = 500, description = "The queue failed to read", body = ApiError),
    )
)]
pub(super) async fn deliveries(
    State(engine): State<Engine>,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be within 1..={MAX_LIST}"),
        );
    }
    let after = match q.after.as_deref().map(|a| a.split_once(':')) {
        None => None,
        Some(Some((ms, id)))
            if (1..=15).contains(&ms.len())
                && ms.bytes().all(|b| b.is_ascii_digit())
                && !id.is_empty() =>
        {
            match ms.parse() {
                Ok(ms) => Some((ms, id.to_owned())),
                Err(_) => return error(StatusCode::BAD_REQUEST, BAD_CURSOR.into()),
            }
        }
        Some(_) => return error(StatusCode::BAD_REQUEST, BAD_CURSOR.into()),
    };
    if let Err(e) = times_in_range(q.from_ms, q.to_ms) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let query = DeliveryQuery {
        filter: DeliveryFilter {
            state: q.state,
            hook: q.hook,
            receiver: q.receiver,
            from_ms: q.from_ms,
            to_ms: q.to_ms,
        },
        after,
        limit,
    };
    match engine.find_deliveries(query).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// One delivery, pending, dead or delivered (within
/// `delivery.history_hours`), with its latest attempts: when each began,
/// how long it took, the status, a few response headers and the first
/// 4 KiB of the response body, or the error. Credentials in its request
/// headers are shown as `[redacted]`.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    params(("id" = String, Path, description = "The delivery's `webhook-id`", example = "msg_2f9c0a4b1d3e5f60718293a4b5c6d7e8")),
    responses(
        (status = 200, description = "The delivery and its attempts, oldest first", body = DeliveryDetail),
        (status = 404, description = "No delivery with that id (or delivered longer ago than `delivery.history_hours`)", body = ApiError),
        (status = 500, description = "The queue failed to read", body = ApiError),
    )
)]
pub(super) async fn delivery(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.delivery(&id).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no delivery {id:?}: it may have been delivered longer ago than \
                 delivery.history_hours, or purged"
            ),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Latest time a filter takes (Unix ms): 15 digits, as `after`'s.
const MAX_MS: u64 = 999_999_999_999_999;

/// Refuses a `from_ms` or `to_ms` past [`MAX_MS`]. (A `from_ms` after
/// `to_ms` is an empty range: it matches nothing.)
fn times_in_range(from: Option<u64>, to: Option<u64>) -> Result<(), String> {
    for (name, ms) in [("from_ms", from), ("to_ms", to)] {
        if ms.is_some_and(|ms| ms > MAX_MS) {
            return Err(format!("{name} is a Unix time in ms, at most {MAX_MS}"));
        }
    }
    Ok(())
}

const NOT_A_RETRY: &str = "give {\"id\": \"msg_…\"}, {\"all_dead\": true}, or a filter: \
     {\"state\": \"dead\"|\"failed\"|\"delivered\"} with optional hook, receiver, from_ms, \
     to_ms; add \"dry_run\": true to count only";

/// Sends deliveries again (replay), each under its `webhook-id`, with a
/// fresh retry schedule, due now: one by id (a dead letter, a delivered
/// one within `delivery.history_hours`, or on SQLite a pending one that
/// failed), every dead letter, or those a filter matches (state, hook,
/// receiver, and when they were queued). None that an engine is sending is
/// taken; on NATS JetStream pending deliveries are refused (409), since any
/// engine may hold one. With `dry_run`, only counts them: what to confirm
/// first. A receiver that deduplicates on `webhook-id` drops a replayed
/// delivery it already took.
#[utoipa::path(
    post,
    path = "/v1/deliveries/retry",
    tag = "deliveries",
    request_body = RetryRequest,
    responses(
        (status = 200, description = "How many deliveries are pending again (with `dry_run`, would be)", body = Requeued),
        (status = 400, description = "Not one of the three forms, `all_dead` not true, `from_ms` or `to_ms` past 15 digits, or not JSON", body = ApiError),
        (status = 404, description = "No delivery with that id to send again", body = ApiError),
        (status = 409, description = "Pending deliveries on NATS JetStream, which any engine may be holding: not replayed", body = ApiError),
        (status = 413, description = "A body larger than 1 MiB", body = ApiError),
        (status = 500, description = "The queue failed to write", body = ApiError),
    )
)]
pub(super) async fn retry(State(engine): State<Engine>, body: Bytes) -> Response {
    let Ok(r) = serde_json::from_slice::<RetryRequest>(&body) else {
        return error(StatusCode::BAD_REQUEST, NOT_A_RETRY.into());
    };
    let (which, dry_run) = match r {
        RetryRequest::One(one) => (Replay::One(one.id), one.dry_run),
        RetryRequest::All(all) if all.all_dead => (Replay::all_dead(), all.dry_run),
        RetryRequest::All(_) => {
            return error(StatusCode::BAD_REQUEST, NOT_A_RETRY.into());
        }
        RetryRequest::Matching(m) => {
            if let Err(e) = times_in_range(m.from_ms, m.to_ms) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            let filter = DeliveryFilter {
                state: m.state,
                hook: m.hook,
                receiver: m.receiver,
                from_ms: m.from_ms,
                to_ms: m.to_ms,
            };
            (Replay::Matching(filter), m.dry_run)
        }
    };
    let one = matches!(which, Replay::One(_));
    let done = if dry_run {
        engine.count_retry(which).await
    } else {
        engine.retry(which).await
    };
    match done {
        Ok(0) if one => error(
            StatusCode::NOT_FOUND,
            "no delivery with that id to send again: not a dead letter, a delivered one within \
             delivery.history_hours, or (on SQLite) a pending one that failed, not being sent now"
                .into(),
        ),
        Ok(n) => Json(Requeued {
            requeued: n,
            dry_run,
        })
        .into_response(),
        Err(e @ Error::Queue(QueueError::Unsupported(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Every receiver with something queued, dead, in flight or failing: its
/// circuit, queue depth, oldest pending delivery and last failures.
#[utoipa::path(
    get,
    path = "/v1/receivers",
    tag = "deliveries",
    responses(
        (status = 200, description = "Receivers by name (`host:port`)", body = Vec<ReceiverStatus>),
        (status = 500, description = "The queue failed to read", body = ApiError),
    )
)]
pub(super) async fn receivers(State(engine): State<Engine>) -> Response {
    match engine.receivers().await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// How many recent events `GET /v1/activity` lists.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ActivityParams {
    /// At most this many, from 1 to 200.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<usize>,
}

/// The last events accepted, newest first, with what each hook decided:
/// kept in memory (the last 200), empty after a restart.
#[utoipa::path(
    get,
    path = "/v1/activity",
    tag = "events",
    params(ActivityParams),
    responses(
        (status = 200, description = "Recent events, newest first", body = Vec<EventActivity>),
        (status = 400, description = "A parameter out of range or unknown", body = ApiError),
    )
)]
pub(super) async fn activity(
    State(engine): State<Engine>,
    query: Result<Query<ActivityParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let limit = match query {
        Ok(Query(q)) => q.limit.unwrap_or(50),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if !(1..=MAX_EVENTS).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be within 1..={MAX_EVENTS}"),
        );
    }
    Json(engine.activity(limit)).into_response()
}

/// The last hour, per minute, since the engine started: events accepted,
/// attempts per receiver (delivered, failed, dead, latency p50 and p99),
/// and each hook's time (p50 and p99). Kept in memory, empty after a
/// restart; what the console plots.
#[utoipa::path(
    get,
    path = "/v1/series",
    tag = "events",
    responses((status = 200, description = "Every minute since the engine started, at most the last 60, oldest first", body = SeriesView))
)]
pub(super) async fn series(State(engine): State<Engine>) -> Json<SeriesView> {
    Json(engine.series())
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 500, description = "The queue failed to read its depth", body = ApiError),
    )
)]
pub(super) async fn metrics(State(engine): State<Engine>) -> Response {
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

/// Liveness: answers `ok` while the process serves, without a token.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Alive", content_type = "text/plain; charset=utf-8", body = String, example = "ok\n"))
)]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness, for a load balancer, without a token: `ready`, or
/// `degraded` while requests wait for the queue (NATS JetStream electing a
/// leader after a node was lost): events are then accepted late, not
/// refused, so the engine stays in rotation; or, on a hooks bucket, while
/// the engine has no set of hooks yet. Always 200.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "`ready`, or `degraded: …` with why", content_type = "text/plain; charset=utf-8", body = String, example = "ready\n"))
)]
pub(super) async fn readyz(State(engine): State<Engine>) -> String {
    if let Some(set) = engine.hook_set()
        && set.version == 0
    {
        // Its gates are not there yet: say so rather than look ready.
        return "degraded: no set of hooks from the hooks bucket yet (none kept from an \
                earlier run, and the bucket has not given one): events pass ungated\n"
            .into();
    }
    let kept = engine.queue_kept_locally();
    match engine.queue_waiting() {
        None if kept == 0 => "ready\n".into(),
        None => format!(
            "degraded: {kept} accepted events are kept on this engine's disk until NATS \
             JetStream takes them\n"
        ),
        Some(waiting) => format!(
            "degraded: requests have waited {:.1} s for the queue (NATS JetStream has no \
             leader); they are accepted once it has one, or kept on this engine's disk \
             meanwhile ({kept} now)\n",
            waiting.as_secs_f64()
        ),
    }
}
