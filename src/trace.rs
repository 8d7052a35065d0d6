//! Traces: the spans of an event's path, and the W3C trace context that
//! comes in with an event and goes out with each delivery.
//!
//! The engine opens `tracing` spans under the target [`TARGET`]: one per
//! event (`ingest`), with a child per hook call (`hook`) and per commit
//! (`commit`, `journal`), and one per delivery attempt (`attempt`), the
//! child of the hook that asked for the delivery, linked to the attempt
//! before it. They become OpenTelemetry spans where the subscriber has a
//! [`tracing-opentelemetry`](https://docs.rs/tracing-opentelemetry) layer
//! (`wasmhooks serve --otlp-endpoint` sets one up); with no such layer, or
//! with the target filtered out, none of this costs more than a disabled
//! span, and nothing is added to deliveries.
//!
//! A delivery carries its hook span's context in a header of the engine's
//! own, [`STORED`] (so it survives a restart, and another engine sending
//! it); each attempt sends its own context as `traceparent` instead.
//!
//! A subscriber that only logs should filter the target out (as `wasmhooks
//! serve` does): enabled, the spans cost their bookkeeping, and prefix each
//! log line. The trace context travels only through a `tracing-opentelemetry`
//! layer of the version this crate uses (0.34).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of the engine's spans: enable it in an OpenTelemetry
/// layer's filter to export them (and keep it out of a log's).
pub const TARGET: &str = "wasmhooks::trace";

/// The W3C header name, in requests in and deliveries out.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// Where a queued delivery keeps its hook call's trace context: a header of
/// the engine's own, which hooks may not set (so a hook cannot choose the
/// trace its attempts join), never sent, and not shown.
pub(crate) const STORED: &str = "x-wasmhooks-traceparent";

/// Whether the engine's spans are wanted (a subscriber enables
/// [`TARGET`]): what is done only for them is skipped otherwise.
pub(crate) fn enabled() -> bool {
    tracing::span_enabled!(target: TARGET, tracing::Level::INFO)
}

/// The span `make` opens if the engine's spans are wanted, else none. A
/// disabled span from a callsite still costs something on every enter,
/// exit and record where no subscriber is set (`tracing`'s `log` feature,
/// which axum turns on, checks whether to log it); `Span::none()` costs
/// nothing.
pub(crate) fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    match enabled() {
        true => make(),
        false => tracing::Span::none(),
    }
}

/// Makes `span` continue the remote trace `traceparent` (W3C: version,
/// trace id, parent id, flags). A malformed one is ignored, as the W3C
/// recommends: the span starts a trace of its own. Must be called before the
/// span is first entered.
pub(crate) fn continue_from(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let remote = TraceContextPropagator::new().extract(&carrier);
    if remote.span().span_context().is_valid() {
        // An error says the span has no OpenTelemetry layer: nothing to continue.
        let _ = span.set_parent(remote);
    }
}

/// `span`'s OpenTelemetry context, if it has one (tracing is on).
pub(crate) fn context_of(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context().span().span_context().clone();
    context.is_valid().then_some(context)
}

/// The `traceparent` header that makes a receiver's work a child of `span`.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let c = context_of(span)?;
    Some(format!(
        "00-{}-{}-{:02x}",
        c.trace_id(),
        c.span_id(),
        c.trace_flags().to_u8()
    ))
}
