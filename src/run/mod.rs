//! From an event to decisions: run the subscribed hooks concurrently and
//! check what they return (this file); the verdict of a pre event, built in
//! one place (`verdict.rs`); and why a hook failed on an event (`error.rs`).
//! Queueing what they decided is [`ingest`](crate::ingest)'s job.

mod error;
mod verdict;

use error::OutcomeError;
pub use error::{CallError, CallSite};
pub use verdict::{HookFailure, Verdict, WouldDeny};
pub(crate) use verdict::{PreDecisions, activity_of, decide, with_failures};

use crate::activity::Activity;
use crate::config::Config;
use crate::delivery::{Delivery, QueuedUnder, delivery_id};
use crate::event::Event;
use crate::hooks::{Hooks, LiveHook};
use crate::sandbox::{Failure, Sandbox};
use crate::trace;
use futures::FutureExt;
use std::sync::Arc;
use tracing::Instrument;

/// What one hook decided on one event, checked.
pub(crate) struct Decision {
    pub deliveries: Vec<Delivery>,
    pub deny: Option<String>,
}

/// Calls hooks and checks what they return: all a dry run needs.
pub(crate) struct Runner {
    pub sandbox: Arc<Sandbox>,
    /// Where each call's time is kept for the console's plots.
    pub activity: Arc<Activity>,
    pub max_deliveries: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// Whether a hook's failure is logged: not in a simulation, whose
    /// report counts them (one a replayed event would flood the log).
    pub log_failures: bool,
}

/// The hooks' decisions on one event, each hook's alone: a hook that
/// fails, or that makes the engine panic while its outcome is processed,
/// fails by itself.
pub(crate) async fn run_all(
    runner: &Arc<Runner>,
    hooks: &Hooks,
    event: &Event,
    uid: &str,
) -> Vec<Result<Decision, CallError>> {
    if let [hook] = &hooks[..] {
        // A single hook costs no hand-off to another thread.
        return vec![caught(hook, event, runner.run(hook, event, uid)).await];
    }
    // A task per hook, so that the hooks of one event run on every worker
    // thread, and one hook's host-side work (building its deliveries, say)
    // never sits between another hook and its deadline. Aborted if the
    // event's work is dropped (a post event's hooks once it turns out to
    // be a copy, or not accepted).
    let tasks: Vec<_> = hooks
        .iter()
        .map(|hook| {
            let (runner, hook, event, uid) =
                (runner.clone(), hook.clone(), event.clone(), uid.to_owned());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                async move { caught(&hook, &event, runner.run(&hook, &event, &uid)).await }
                    .in_current_span(),
            ))
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for (hook, task) in hooks.iter().zip(tasks) {
        results.push(task.await.unwrap_or_else(|e| {
            // Panics are caught inside; this is the runtime shutting down.
            Err(CallError::Internal {
                site: site(hook, event),
                message: format!("the hook's task ended: {e}"),
            })
        }));
    }
    results
}

/// `run`, with a panic turned into that hook's [`CallError::Internal`].
async fn caught(
    hook: &LiveHook,
    event: &Event,
    run: impl Future<Output = Result<Decision, CallError>>,
) -> Result<Decision, CallError> {
    std::panic::AssertUnwindSafe(run)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            hook.stats.errors.inc();
            let e = CallError::Internal {
                site: site(hook, event),
                message,
            };
            tracing::error!("{e}");
            Err(e)
        })
}

fn site(hook: &LiveHook, event: &Event) -> CallSite {
    CallSite {
        hook: hook.name().to_owned(),
        method: event.method().to_owned(),
        call_id: event.call_id().to_owned(),
        phase: event.phase(),
    }
}

impl Runner {
    pub(crate) fn new(sandbox: Arc<Sandbox>, config: &Config, activity: Arc<Activity>) -> Runner {
        Runner {
            sandbox,
            activity,
            max_deliveries: config.max_deliveries_per_event,
            max_body_bytes: config.max_body_bytes,
            max_headers: config.max_headers_per_delivery,
            max_header_bytes: config.max_header_bytes,
            log_failures: true,
        }
    }

    /// Checks a hook's outcome against the caps, before anything is built
    /// from it: the hook decides what it returns, the engine how much.
    fn check(&self, o: &crate::sandbox::RawOutcome) -> Result<(), OutcomeError> {
        if o.deliveries.len() > self.max_deliveries {
            return Err(OutcomeError::Deliveries {
                asked: o.deliveries.len(),
                max: self.max_deliveries,
            });
        }
        for d in &o.deliveries {
            let url = || d.url.clone();
            if d.body.len() > self.max_body_bytes {
                return Err(OutcomeError::Body {
                    url: url(),
                    bytes: d.body.len(),
                    max: self.max_body_bytes,
                });
            }
            if d.headers.len() > self.max_headers {
                return Err(OutcomeError::Headers {
                    url: url(),
                    count: d.headers.len(),
                    max: self.max_headers,
                });
            }
            let bytes: usize = d.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
            if bytes > self.max_header_bytes {
                return Err(OutcomeError::HeaderBytes {
                    url: url(),
                    bytes,
                    max: self.max_header_bytes,
                });
            }
        }
        Ok(())
    }

    /// Calls the hook, counts the call, logs and returns a failure, and
    /// checks its outcome; in a span of its own (see [`crate::trace`]).
    pub(crate) async fn run(
        &self,
        hook: &LiveHook,
        event: &Event,
        uid: &str,
    ) -> Result<Decision, CallError> {
        let span = trace::span(|| {
            tracing::info_span!(
                target: trace::TARGET,
                "hook",
                wasmhooks.hook = hook.name(),
                wasmhooks.version = %hook.hash,
                wasmhooks.outcome = tracing::field::Empty,
                wasmhooks.deliveries = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            )
        });
        let decision = self.call(hook, event, uid).instrument(span.clone()).await;
        if span.is_disabled() {
            return decision;
        }
        match &decision {
            Ok(decision) => {
                let outcome = match (&decision.deny, decision.deliveries.len()) {
                    (Some(_), _) => "deny",
                    (None, 0) => "nothing",
                    (None, _) => "deliveries",
                };
                span.record("wasmhooks.outcome", outcome);
                span.record("wasmhooks.deliveries", decision.deliveries.len() as i64);
            }
            Err(e) => {
                span.record("wasmhooks.outcome", e.kind());
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", e.to_string());
            }
        }
        decision.map(|mut decision| {
            // Each attempt of these will be a child of this call.
            if let Some(traceparent) = trace::traceparent_of(&span) {
                for d in &mut decision.deliveries {
                    d.set_traceparent(&traceparent);
                }
            }
            decision
        })
    }

    async fn call(&self, hook: &LiveHook, event: &Event, uid: &str) -> Result<Decision, CallError> {
        hook.stats.calls.inc();
        let started = std::time::Instant::now();
        // Boxed: the call's future (wasmtime's instantiation and calls) is
        // kilobytes, and every future that holds it inline is copied whole
        // when it is spawned and when its task finishes.
        let call = Box::pin(self.sandbox.handle(&hook.prepared, event));
        let result = call.await;
        let took = started.elapsed();
        hook.stats.duration.observe(took.as_secs_f64());
        self.activity.series().hook(hook.name(), took);
        let site = || site(hook, event);
        let outcome = result.map_err(|f| match f {
            Failure::Timeout(deadline, ran) => CallError::Timeout {
                site: site(),
                deadline,
                ran,
            },
            Failure::MemoryCap(cap_mib) => CallError::MemoryCap {
                site: site(),
                cap_mib,
            },
            Failure::Trap(message) => CallError::Trap {
                site: site(),
                message,
            },
            Failure::Returned(message) => CallError::Returned {
                site: site(),
                message,
            },
        });
        let bad = |e: OutcomeError| CallError::BadOutcome {
            site: site(),
            message: e.to_string(),
        };
        let decision = outcome.and_then(|o| {
            self.check(&o).map_err(bad)?;
            let deliveries = o
                .deliveries
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    let id = delivery_id(uid, hook.name(), i, event.phase());
                    let name = hook.prepared.name.clone();
                    let queued = QueuedUnder::of(&hook.policy);
                    Delivery::new(id, name, &d.url, d.headers, d.body, queued)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.into()))?;
            Ok(Decision {
                deliveries,
                deny: o.deny,
            })
        });
        if let Err(e) = &decision {
            hook.stats.errors.inc();
            if matches!(e, CallError::Timeout { .. }) {
                hook.stats.timeouts.inc();
            }
            if self.log_failures {
                tracing::warn!("{e}");
            }
        }
        decision
    }
}
