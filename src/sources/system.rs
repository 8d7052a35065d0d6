//! The engine as a source of its own events: alerts (`crate::alerts`),
//! summarised there, accepted here as system events through the one
//! ingest path, so hooks subscribed to `wasmhooks.*` in the `system`
//! phase get them like any other event, and their deliveries are queued
//! and sent like any other (under `sys_` ids: their dead letters raise no
//! alert; their receiver's circuit opening or closing does, summarised).

use crate::alerts::{Alerts, Kind, Summary};
use crate::delivery::history::engine_name;
use crate::event::Event;
use crate::ingest::{Ingest, IngestError};
use crate::metrics::Metrics;
use crate::queue::QueueError;
use crate::util::{now_ms, random_id};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// The source's name, in metrics.
const NAME: &str = "system";

/// Longest wait between two looks when no window is open.
const IDLE: Duration = Duration::from_secs(3600);

/// First and longest pause before trying again an event the engine
/// could not accept (the queue failing: a full disk, NATS unreachable).
const RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// Events waiting to be accepted again; past this the oldest go, said.
const MAX_WAITING: usize = 4096;

/// Turns alerts into system events for as long as the engine runs. One the
/// queue could not take is tried again, the same event (so a write that
/// went through after all is recognised, not sent twice), with back-off:
/// alerts matter most when the engine is in trouble. Any other failure is
/// logged and the event dropped, so that it cannot hold the others back.
pub(super) async fn emit(alerts: Arc<Alerts>, ingest: Arc<Ingest>, metrics: Arc<Metrics>) {
    let engine = engine_name();
    let mut waiting: VecDeque<(Kind, Event)> = VecDeque::new();
    let mut pause = RETRY.0;
    loop {
        let (due, next) = alerts.take(alerts.clock());
        for summary in due {
            match event(&summary, &engine) {
                Ok(event) => waiting.push_back((summary.kind, event)),
                Err(e) => tracing::error!("a system event is malformed (a bug in wasmhooks): {e}"),
            }
        }
        while waiting.len() > MAX_WAITING {
            waiting.pop_front();
            tracing::warn!("a system event was dropped: the engine could not accept it in time");
        }
        let mut failed = false;
        while let Some((kind, event)) = waiting.pop_front() {
            let method = kind.method();
            // Waits only while too many events are in progress: the
            // alerts meanwhile stay summarised, bounded.
            match ingest.post(event.clone()).await {
                Ok(()) => {
                    let (topic, action) = method
                        .trim_start_matches("wasmhooks.")
                        .split_once('.')
                        .unwrap_or(("", method));
                    metrics.source_event(NAME, topic, action);
                    pause = RETRY.0;
                }
                Err(IngestError::Queue(QueueError::Closed)) => return, // the engine is going away
                Err(e @ IngestError::Queue(_)) => {
                    tracing::error!(
                        method,
                        "cannot accept a system event ({e}); trying again in {pause:?}"
                    );
                    waiting.push_front((kind, event));
                    failed = true;
                    break;
                }
                Err(e) => tracing::error!(method, "a system event was dropped: {e}"),
            }
        }
        let wait = if failed {
            let wait = pause;
            pause = (pause * 2).min(RETRY.1);
            wait
        } else {
            next.map_or(IDLE, |at| {
                Duration::from_millis(at.saturating_sub(alerts.clock()).max(1))
            })
        };
        tokio::select! {
            () = alerts.raised(), if !failed => {}
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
