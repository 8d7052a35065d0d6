//! A pre event: its hooks, its vetoes, the `wait` hooks' deliveries, and
//! its verdict (see the module's doc above).

use super::{Ingest, IngestError, caught, span_of};
use crate::delivery::Delivery;
use crate::event::{Event, Phase};
use crate::hooks::{Hooks, LiveHook};
use crate::must_finish::MustFinish;
use crate::outbox::WaitOutcome;
use crate::queue::Batch;
use crate::run::{self, HookFailure, Verdict};
use std::sync::Arc;
use tracing::Instrument;

impl Ingest {
    /// Runs a pre event through the hooks subscribed to it and returns the
    /// verdict (see the module's doc).
    pub(crate) async fn pre(self: &Arc<Self>, event: Event) -> Result<Verdict, IngestError> {
        let hooks = self.registry.snapshot().matching(&event);
        let span = span_of(&event, hooks.len());
        let verdict = self.pre_to(hooks, event).instrument(span.clone()).await;
        if !span.is_disabled()
            && let Ok(verdict) = &verdict
        {
            span.record("wasmhooks.allowed", verdict.allowed);
        }
        verdict
    }

    async fn pre_to(self: &Arc<Self>, hooks: Hooks, event: Event) -> Result<Verdict, IngestError> {
        if hooks.is_empty() {
            // No WASM call, nothing to queue: nothing to recognise either.
            let verdict = run::decide(&hooks, Vec::new()).verdict;
            self.decided(&event, Vec::new(), Some(verdict.allowed()));
            return Ok(verdict);
        }
        let (key, uid) = self.identify(&event);
        let publish = match &key {
            Some(key) => match self.remember(key) {
                Ok(publish) => Some(publish),
                Err(mut seen) => {
                    let verdict = seen.wait_for(Option::is_some).await;
                    return match verdict {
                        Ok(verdict) => Ok(verdict.clone().expect("waited for it")),
                        Err(_) => Err(IngestError::FirstCopyFailed {
                            method: event.method().to_owned(),
                            call_id: event.call_id().to_owned(),
                        }),
                    };
                }
            },
            None => None,
        };
        let ingest = self.clone();
        // Held until its deliveries are committed and its verdict is known,
        // so drain() waits for them.
        let permit = Arc::new(self.place().await);
        // In the caller's task; what is left of it finishes in a task of its
        // own if the caller goes away.
        let work = MustFinish::new(
            async move {
                let results = run::run_all(&ingest.runner, &hooks, &event, &uid).await;
                let decided = run::activity_of(&hooks, &results, true);
                let run::PreDecisions {
                    verdict,
                    queued,
                    waiting,
                } = run::decide(&hooks, results);
                // The verdict needs the vetoes and the `wait` hooks' outcomes,
                // not the other deliveries: they are committed alongside, and
                // the caller does not wait for that commit.
                if !queued.is_empty() {
                    let (ingest, permit) = (ingest.clone(), permit.clone());
                    tokio::spawn(
                        async move {
                            let batch = Batch {
                                queued,
                                ..Batch::default()
                            };
                            ingest.commit_until_done(batch).await;
                            drop(permit);
                        }
                        .in_current_span(),
                    );
                }
                let verdict = ingest.wait_pre(verdict, waiting).await;
                let decided = run::with_failures(decided, &verdict);
                ingest.decided(&event, decided, Some(verdict.allowed()));
                if let Some(publish) = publish {
                    publish.send_replace(Some(verdict.clone()));
                }
                drop(permit);
                verdict
            }
            .in_current_span(),
        );
        caught(work, Phase::Pre).await
    }

    /// Queues the `wait` hooks' deliveries of a pre event and waits for
    /// them; returns the final verdict.
    async fn wait_pre(
        &self,
        mut verdict: Verdict,
        waiting: Vec<(Arc<LiveHook>, Vec<Delivery>)>,
    ) -> Verdict {
        let waits = futures::future::join_all(
            waiting
                .into_iter()
                .map(|(hook, deliveries)| self.wait_for(hook, deliveries)),
        )
        .await;
        for (hook, failed) in waits {
            if let Some((kind, message)) = failed {
                let deny = verdict.fail(&hook, HookFailure::new(&hook, kind, message));
                verdict.deny(&hook, deny);
            }
        }
        verdict
    }

    /// Queues a `wait` hook's deliveries and waits for each one's first
    /// final outcome, within the wait budget. Returns the hook and, if it
    /// failed, the failure's kind and message.
    async fn wait_for(
        &self,
        hook: Arc<LiveHook>,
        deliveries: Vec<Delivery>,
    ) -> (Arc<LiveHook>, Option<(&'static str, String)>) {
        if deliveries.is_empty() {
            return (hook, None);
        }
        let waits = match self.workers.submit_waiting(deliveries).await {
            Ok(waits) => waits,
            Err(e) => {
                let message = format!("its deliveries could not be queued: {e}");
                return (hook, Some(("queue", message)));
            }
        };
        let deadline = tokio::time::Instant::now() + self.wait_budget;
        let mut failed = None;
        let mut ids = Vec::new();
        for (delivery, outcome) in waits {
            ids.push(delivery.id.clone());
            if failed.is_some() {
                continue;
            }
            let reason = match tokio::time::timeout_at(deadline, outcome).await {
                Ok(Ok(WaitOutcome::Delivered)) => continue,
                Ok(Ok(WaitOutcome::Dead(reason))) => reason,
                Ok(Err(_)) => "the engine is shutting down".to_owned(),
                Err(_) => format!(
                    "not delivered within {:?}; retrying in the background",
                    self.wait_budget
                ),
            };
            let message = format!(
                "delivery {} to {} failed: {reason}",
                delivery.id, delivery.url
            );
            failed = Some(("delivery", message));
        }
        self.workers.stop_waiting(ids);
        (hook, failed)
    }
}
