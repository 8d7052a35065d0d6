//! One attempt: the delivery sent, its outcome recorded (retry, delivered,
//! dead), the breaker told, and the callers waiting for it answered.

use super::*;
use crate::activity::Attempted;
use crate::alerts::{Alert, Kind};
use crate::delivery::SYSTEM_ID_PREFIX;
use crate::delivery::history::ShownUrl;
use crate::trace;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How a `wait` delivery's wait ended.
#[derive(Debug, Clone)]
pub(crate) enum WaitOutcome {
    /// The receiver took it.
    Delivered,
    /// It will not be delivered: the last attempt's error.
    Dead(String),
}

impl Workers {
    /// One attempt: send, give the slot back, record the result, tell a
    /// waiting caller.
    pub(super) async fn attempt(&self, claimed: Claimed, mut slot: Slot) {
        let Claimed {
            delivery: d,
            attempts,
        } = claimed;
        let attempts = attempts + 1;
        let receiver = d.receiver();
        let span = self.span_of(&d, attempts);
        let traceparent = trace::traceparent_of(&span);
        let policy = self.policies.current(&d.hook);
        let (at_ms, began) = (now_ms(), std::time::Instant::now());
        let send = self
            .sender
            .attempt(&d, policy.as_deref(), traceparent.as_deref());
        // A panic while attempting (a bug) fails this delivery alone.
        let (sent, answer) = std::panic::AssertUnwindSafe(send.instrument(span.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                let bug = Attempt::Permanent {
                    reason: "the engine failed while sending it (a bug in wasmhooks; \
                                 please report it); retry this dead letter once fixed"
                        .into(),
                    status: None,
                };
                (bug, None)
            });
        let took = began.elapsed();
        let duration_ms = took.as_millis() as u64;
        // Logged without the URL's password, if it has one.
        let shown = ShownUrl(&d.url);
        let (finish, error, status, up) = match sent {
            Attempt::Delivered(status) => {
                tracing::debug!(hook = %d.hook, id = %d.id, url = %shown, %status, attempts, "delivered");
                (Finish::Delivered, None, Some(status), Some(true))
            }
            Attempt::Permanent { reason, status } => {
                tracing::error!(hook = %d.hook, id = %d.id, url = %shown, "delivery failed for good, kept as a dead letter: {reason}");
                // An answer means the receiver is up; no answer (refused by
                // the guard, cannot be signed) says nothing about it.
                let up = status.is_some().then_some(true);
                (Finish::Dead, Some(reason), status, up)
            }
            Attempt::Retry {
                reason,
                status,
                retry_after,
            } => match retry_delay(self.sender.config(), attempts, retry_after) {
                Some(delay) => {
                    tracing::info!(hook = %d.hook, id = %d.id, url = %shown, attempts, "{reason}; retrying in {delay:?}");
                    let at_ms = now_ms() + delay.as_millis() as u64;
                    (Finish::Retry { at_ms }, Some(reason), status, Some(false))
                }
                None => {
                    let error = gave_up(attempts, &reason);
                    tracing::error!(hook = %d.hook, id = %d.id, url = %shown, "delivery kept as a dead letter: {error}");
                    (Finish::Dead, Some(error), status, Some(false))
                }
            },
        };
        slot.up = up;
        slot.why = error.clone();
        drop(slot);
        let record = AttemptRecord {
            at_ms,
            duration_ms,
            outcome: finish.outcome(),
            status: status.map(|s| s.as_u16()),
            error,
            headers: answer
                .as_ref()
                .map(|a| a.headers.clone())
                .unwrap_or_default(),
            body_truncated: answer.as_ref().is_some_and(|a| a.truncated),
            body: answer.map(|a| a.body),
            engine: self.engine.clone(),
        };
        self.trace_outcome(&span, &d.id, finish, &record);
        let attempted = match finish {
            Finish::Delivered => Attempted::Delivered,
            Finish::Retry { .. } => Attempted::Failed,
            Finish::Dead => Attempted::Dead,
        };
        self.metrics.attempt(&receiver, attempted);
        self.activity.series().attempt(&receiver, attempted, took);
        if let Some(error) = &record.error {
            self.activity.failure(
                &receiver,
                ReceiverFailure {
                    at_ms: now_ms(),
                    id: d.id.clone(),
                    hook: d.hook.to_string(),
                    status: record.status,
                    error: error.clone(),
                    dead: finish == Finish::Dead,
                },
            );
        }
        // Once recorded as dead (not when the next run sends it again),
        // and never for a system event's own: alerts cannot feed on
        // their own dead letters.
        let alert = (finish == Finish::Dead && !d.id.starts_with(SYSTEM_ID_PREFIX)).then(|| {
            let alert = Alert::new(Kind::DeliveryDead, receiver.clone())
                .with("id", d.id.as_str())
                .with("hook", &*d.hook)
                .with("attempts", attempts)
                .with("error", record.error.clone());
            match record.status {
                Some(status) => alert.with("status", status),
                None => alert,
            }
        });
        let outcome = match finish {
            Finish::Delivered => Some(WaitOutcome::Delivered),
            Finish::Dead => Some(WaitOutcome::Dead(record.error.clone().unwrap_or_default())),
            Finish::Retry { .. } => None,
        };
        // The row stays claimed by this run until recorded: keep trying
        // (a full disk), or it would wait for the next start.
        let mut pause = FINISH_RETRY.0;
        let recorded = loop {
            let Err(e) = self
                .queue
                .finish(d.id.clone(), attempts, finish, record.clone())
                .await
            else {
                break true;
            };
            if matches!(e, QueueError::Closed) || self.stop.is_cancelled() {
                break false; // the next run reclaims it and sends it again
            }
            tracing::error!(id = %d.id, "cannot record a delivery attempt ({e}); trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(FINISH_RETRY.1);
        };
        if let Some(alert) = alert.filter(|_| recorded) {
            self.alerts.raise(alert);
        }
        if let Some(outcome) = outcome {
            self.tell_waiters(&d.id, outcome);
        }
    }

    /// An attempt's span (see [`crate::trace`]): a child of the hook call
    /// that asked for the delivery, linked to the delivery's attempt before.
    fn span_of(&self, d: &Delivery, attempts: u32) -> tracing::Span {
        let span = trace::span(|| {
            tracing::info_span!(
                target: trace::TARGET,
                parent: None,
                "attempt",
                otel.kind = "client",
                wasmhooks.delivery = %d.id,
                wasmhooks.hook = &*d.hook,
                server.address = d.url.host_str().unwrap_or(""),
                server.port = d.url.port_or_known_default().map_or(0, i64::from),
                wasmhooks.retry = i64::from(attempts) - 1,
                http.response.status_code = tracing::field::Empty,
                wasmhooks.outcome = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            )
        });
        if span.is_disabled() {
            return span;
        }
        if let Some(traceparent) = d.traceparent() {
            trace::continue_from(&span, traceparent);
        }
        if let Some(before) = self.retried.lock().unwrap().remove(&d.id) {
            span.add_link(before);
        }
        span
    }

    /// Records an attempt's outcome in its span; remembers the span of one
    /// to be retried, for the next attempt to link to.
    fn trace_outcome(
        &self,
        span: &tracing::Span,
        id: &str,
        finish: Finish,
        record: &AttemptRecord,
    ) {
        if span.is_disabled() {
            return;
        }
        if let Some(status) = record.status {
            span.record("http.response.status_code", i64::from(status));
        }
        span.record("wasmhooks.outcome", record.outcome.as_str());
        if let Some(error) = &record.error {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
        if let (Finish::Retry { .. }, Some(context)) = (finish, trace::context_of(span)) {
            self.retried.lock().unwrap().insert(id.to_owned(), context);
        }
    }

    pub(super) fn tell_waiters(&self, id: &str, outcome: WaitOutcome) {
        let waiting = self.waiters.lock().unwrap().remove(id);
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(outcome.clone());
        }
    }

    /// Forgets the waiters of deliveries whose caller stopped waiting.
    pub(crate) fn stop_waiting(&self, ids: impl IntoIterator<Item = String>) {
        let mut waiters = self.waiters.lock().unwrap();
        for id in ids {
            if let Some(list) = waiters.get_mut(&id) {
                list.retain(|tx| !tx.is_closed());
                if list.is_empty() {
                    waiters.remove(&id);
                }
            }
        }
    }
}
