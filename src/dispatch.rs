//! From an event to outcomes: run the subscribed hooks concurrently, check
//! what they return, queue (or, for `wait` hooks, send) their deliveries,
//! and turn pre-event vetoes into a verdict.

use crate::config::OnError;
use crate::delivery::{Delivery, Sender, delivery_id, new_uid};
use crate::error::{CallError, CallSite};
use crate::event::Event;
use crate::outbox::{Outbox, OutboxError};
use crate::registry::{Hooks, LiveHook, Registry};
use crate::sandbox::{Failure, Sandbox};
use crate::workers::Workers;
use serde::Serialize;
use std::sync::Arc;

/// The answer to a pre event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the operation may go ahead.
    pub allowed: bool,
    /// The hook that vetoed it.
    pub denied_by: Option<String>,
    /// The hook's reason.
    pub reason: Option<String>,
    /// Hooks that failed on this event (their `on_error` was applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<HookFailure>,
}

/// A hook that failed on an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookFailure {
    /// The hook.
    pub hook: String,
    /// `timeout`, `memory`, `trap`, `error`, `bad-outcome` or `delivery`.
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// What one hook decided on one event, checked.
pub(crate) struct Decision {
    pub deliveries: Vec<Delivery>,
    pub deny: Option<String>,
}

/// Calls hooks and checks what they return: all a dry run needs.
pub(crate) struct Runner {
    pub sandbox: Arc<Sandbox>,
    pub max_deliveries: usize,
    pub max_body_bytes: usize,
}

pub(crate) struct Dispatcher {
    pub registry: Arc<Registry>,
    pub runner: Runner,
    pub outbox: Arc<dyn Outbox>,
    pub workers: Arc<Workers>,
    pub sender: Arc<Sender>,
    /// Longest a pre event waits for a `wait` hook's deliveries, retries included.
    pub wait_budget: std::time::Duration,
}

impl Dispatcher {
    /// Runs the pre event through every subscribed hook at once and decides.
    pub async fn pre(&self, event: Event) -> Verdict {
        let hooks = self.matching(&event);
        let uid = new_uid();
        // Concurrently within this task: a busy hook yields at every epoch
        // tick, so none holds up the others, and a single hook costs no
        // hand-off to another thread.
        let results =
            futures::future::join_all(hooks.iter().map(|hook| self.pre_one(hook, &event, &uid)))
                .await;
        let mut verdict = Verdict {
            allowed: true,
            denied_by: None,
            reason: None,
            failures: Vec::new(),
        };
        for (hook, result) in hooks.iter().zip(results) {
            let deny = match result {
                Ok(deny) => deny,
                Err(failure) => {
                    let deny = (hook.config.on_error == OnError::Deny).then(|| {
                        format!("hook failed and its on_error is deny: {}", failure.message)
                    });
                    verdict.failures.push(failure);
                    deny
                }
            };
            if let (Some(reason), true) = (deny, verdict.allowed) {
                verdict = Verdict {
                    allowed: false,
                    denied_by: Some(hook.name().to_owned()),
                    reason: Some(reason),
                    ..verdict
                };
            }
        }
        verdict
    }

    /// One hook on a pre event: its veto, or why it failed.
    async fn pre_one(
        &self,
        hook: &LiveHook,
        event: &Event,
        uid: &str,
    ) -> Result<Option<String>, HookFailure> {
        let decision = self
            .run(hook, event, uid)
            .await
            .map_err(|e| failure(hook, e.kind(), e.to_string()))?;
        if !hook.config.wait {
            self.queue(hook, decision.deliveries).await;
            return Ok(decision.deny);
        }
        // The caller is waiting, so retries get a bounded budget. What has
        // not gone out by then is handed to the outbox: nothing is dropped.
        let mut deliveries = std::collections::VecDeque::from(decision.deliveries);
        while let Some(delivery) = deliveries.pop_front() {
            let reason = match tokio::time::timeout(
                self.wait_budget,
                self.sender.deliver(&delivery),
            )
            .await
            {
                Ok(Ok(_status)) => continue,
                Ok(Err(reason)) => reason,
                Err(_) => {
                    let reason = format!(
                        "not delivered within {:?}; retrying in the background",
                        self.wait_budget
                    );
                    deliveries.push_front(delivery.clone());
                    reason
                }
            };
            self.queue(hook, deliveries.into()).await;
            let message = format!(
                "delivery {} to {} failed: {reason}",
                delivery.id, delivery.url
            );
            return Err(failure(hook, "delivery", message));
        }
        Ok(decision.deny)
    }

    /// The live hooks subscribed to this event, from the current snapshot.
    pub fn matching(&self, event: &Event) -> Hooks {
        self.registry.snapshot().matching(event)
    }

    /// Runs a journaled post event through the hooks that were subscribed
    /// to it when it was accepted, then commits all their deliveries and
    /// retires the event in one transaction. Called off the caller's path.
    pub async fn post(&self, hooks: Hooks, event: Event, ticket: i64, uid: String) {
        let deliveries = self.run_post(&hooks, &event, &uid).await;
        self.post_commit(ticket, &event, deliveries).await;
    }

    /// Runs a post event through its hooks, concurrently; returns all
    /// their deliveries (a failing hook has been logged and counted).
    pub async fn run_post(&self, hooks: &Hooks, event: &Event, uid: &str) -> Vec<Delivery> {
        let runs = hooks.iter().map(|hook| self.run(hook, event, uid));
        futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .flat_map(|decision| decision.deliveries)
            .collect()
    }

    /// Commits a journaled post event's deliveries and retires the event.
    pub async fn post_commit(&self, ticket: i64, event: &Event, deliveries: Vec<Delivery>) {
        match self.submit(Some(ticket), deliveries).await {
            Ok(()) => {}
            Err(e) => tracing::error!(
                method = event.method(),
                call_id = event.call_id(),
                "cannot queue the event's deliveries ({e}); it stays journaled and runs again at restart"
            ),
        }
    }

    /// Queues a pre event's deliveries; returns once they are committed.
    async fn queue(&self, hook: &LiveHook, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        if let Err(e) = self.submit(None, deliveries).await {
            tracing::error!(hook = hook.name(), "deliveries not queued: {e}");
        }
    }

    /// Commits deliveries; the workers send at once those they have room for.
    pub async fn submit(
        &self,
        ticket: Option<i64>,
        deliveries: Vec<Delivery>,
    ) -> Result<(), OutboxError> {
        self.workers.submit(ticket, deliveries).await
    }

    async fn run(&self, hook: &LiveHook, event: &Event, uid: &str) -> Result<Decision, CallError> {
        self.runner.run(hook, event, uid).await
    }
}

impl Runner {
    pub fn new(sandbox: Arc<Sandbox>, config: &crate::Config) -> Runner {
        Runner {
            sandbox,
            max_deliveries: config.max_deliveries_per_event,
            max_body_bytes: config.max_body_bytes,
        }
    }

    /// Calls the hook, counts the call, logs and returns a failure, and
    /// checks its outcome.
    pub async fn run(
        &self,
        hook: &LiveHook,
        event: &Event,
        uid: &str,
    ) -> Result<Decision, CallError> {
        hook.stats.calls.inc();
        let started = std::time::Instant::now();
        let result = self.sandbox.handle(&hook.prepared, event).await;
        hook.stats.duration.observe(started.elapsed().as_secs_f64());
        let site = || CallSite {
            hook: hook.name().to_owned(),
            method: event.method().to_owned(),
            call_id: event.call_id().to_owned(),
            phase: event.phase(),
        };
        let outcome = result.map_err(|f| match f {
            Failure::Timeout(deadline) => CallError::Timeout {
                site: site(),
                deadline,
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
        let decision = outcome.and_then(|o| {
            if let Some(d) = o
                .deliveries
                .iter()
                .find(|d| d.body.len() > self.max_body_bytes)
            {
                return Err(CallError::BadOutcome {
                    site: site(),
                    message: format!(
                        "a delivery to {} has a body of {} bytes; at most {} are allowed",
                        d.url,
                        d.body.len(),
                        self.max_body_bytes
                    ),
                });
            }
            if o.deliveries.len() > self.max_deliveries {
                return Err(CallError::BadOutcome {
                    site: site(),
                    message: format!(
                        "asked for {} deliveries; at most {} are allowed per event",
                        o.deliveries.len(),
                        self.max_deliveries
                    ),
                });
            }
            let deliveries = o
                .deliveries
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    let id = delivery_id(uid, hook.name(), i);
                    let signed = hook.policy.signer.is_some();
                    let name = hook.prepared.name.clone();
                    Delivery::new(id, name, &d.url, d.headers, d.body, signed)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| CallError::BadOutcome {
                    site: site(),
                    message,
                })?;
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
            tracing::warn!("{e}");
        }
        decision
    }
}

fn failure(hook: &LiveHook, kind: &str, message: String) -> HookFailure {
    HookFailure {
        hook: hook.name().to_owned(),
        kind: kind.to_owned(),
        message,
    }
}
