//! The engine as a source of its own events: alerts (`crate::alerts`),
//! summarised there, accepted here as system events through the one
//! ingest path, so hooks subscribed to `wasmhooks.*` in the `system`
//! phase get them like any other event, and their deliveries are queued
//! and sent like any other (under `sys_` ids, whose failures raise
//! nothing more).

use crate::alerts::{Alerts, Summary};
use crate::delivery::history::engine_name;
use crate::event::Event;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::util::{now_ms, random_id};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The source's name, in metrics.
const NAME: &str = "system";

/// Longest wait between two looks when no window is open.
const IDLE: Duration = Duration::from_secs(3600);

/// Turns alerts into system events for as long as the engine runs.
pub(super) async fn emit(alerts: Arc<Alerts>, ingest: Arc<Ingest>, metrics: Arc<Metrics>) {
    let engine = engine_name();
    loop {
        let (due, next) = alerts.take(now_ms());
        for summary in due {
            let method = summary.kind.method();
            let event = match event(&summary, &engine) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!("a system event is malformed (a bug in wasmhooks): {e}");
                    continue;
                }
            };
            // Waits only while too many events are in progress: the
            // alerts meanwhile stay summarised, bounded.
            match ingest.post(event).await {
                Ok(()) => {
                    let (topic, action) = method
                        .trim_start_matches("wasmhooks.")
                        .split_once('.')
                        .unwrap_or(("", method));
                    metrics.source_event(NAME, topic, action);
                }
                Err(e) => tracing::error!(method, "cannot accept a system event: {e}"),
            }
        }
        let wait = next.map_or(IDLE, |at| {
            Duration::from_millis(at.saturating_sub(now_ms()).max(1))
        });
        tokio::select! {
            () = alerts.raised() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The system event of `summary`: a web-hook payload like the
/// orchestrator's, with `type` `system`, the engine that raised it, and
/// what happened in `params`.
fn event(summary: &Summary, engine: &str) -> Result<Event, crate::event::EventError> {
    Event::from_value(json!({
        "type": "system",
        "method": summary.kind.method(),
        "callId": format!("sys-{}", random_id()),
        "timestamp": now_ms(),
        "engine": engine,
        "params": Value::Object(summary.params.clone()),
    }))
}
