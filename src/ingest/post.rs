//! A post event: acknowledged once what it became is committed (see the
//! module's doc above).

use super::{Ingest, IngestError, caught, span_of};
use crate::activity::HookActivity;
use crate::delivery::Delivery;
use crate::event::{Event, Phase};
use crate::hooks::Hooks;
use crate::must_finish::MustFinish;
use crate::queue::{Batch, Committed, Journaled};
use crate::run;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

impl Ingest {
    /// Accepts a post event (see the module's doc). Waits only when too
    /// many post events are already in progress.
    pub(crate) async fn post(self: &Arc<Self>, event: Event) -> Result<(), IngestError> {
        let hooks = self.registry.snapshot().matching(&event);
        let span = span_of(&event, hooks.len());
        self.post_to(hooks, event).instrument(span).await
    }

    async fn post_to(self: &Arc<Self>, hooks: Hooks, mut event: Event) -> Result<(), IngestError> {
        // Before anything keeps it: the hooks, and the archive, which keeps
        // the events no hook wants too.
        if self.redact.iter().any(|m| m.matches(event.method())) {
            event.redact_result("* obfuscated *");
        }
        if hooks.is_empty() {
            // The engine's own alerts, unwanted, would only push the
            // orchestrator's events out of the console's log.
            if event.phase() != Phase::System {
                self.decided(&event, Vec::new(), None);
            }
            return Ok(()); // no WASM call for an event nobody wants
        }
        let permit = self.place().await;
        let (key, uid) = self.identify(&event);
        let ingest = self.clone();
        // In the caller's task; what is left of it finishes in a task of its
        // own if the caller goes away (in the event's span, either way).
        let work = MustFinish::new(
            async move { ingest.accept_post(hooks, event, key, uid, permit).await }
                .in_current_span(),
        );
        caught(work, Phase::Post).await?
    }

    /// Runs a post event's hooks and answers once what it became is
    /// committed; `permit` is held until its deliveries are.
    async fn accept_post(
        self: Arc<Self>,
        hooks: Hooks,
        event: Event,
        key: Option<String>,
        uid: String,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), IngestError> {
        let mut run = MustFinish::new({
            let (ingest, hooks, event, uid) =
                (self.clone(), hooks.clone(), event.clone(), uid.clone());
            async move { ingest.run_post(&hooks, &event, &uid).await }.in_current_span()
        });
        // Hooks that finish quickly: their deliveries are the one write.
        if let Ok((deliveries, decided)) = tokio::time::timeout(self.inline, &mut run).await {
            let batch = Batch {
                key,
                queued: deliveries,
                ..Batch::default()
            };
            let committed = self.workers.submit(batch).await;
            // Shown only if it was accepted, and accepted now (not a copy).
            if let Ok(Committed::Done { .. }) = committed {
                self.decided(&event, decided, None);
            }
            return committed.map(drop).map_err(Into::into);
        }
        // Slower ones: journal the event, so it survives a crash, and answer.
        let journaled = Journaled {
            ticket: 0,
            uid,
            key,
            hooks: hooks.iter().map(|h| h.name().to_owned()).collect(),
            payload: event.payload().to_owned(),
        };
        // The hooks go on meanwhile, in a task of their own: nothing polls
        // them here while the journal is written.
        let run = run.spawn();
        let journal =
            crate::trace::span(|| tracing::info_span!(target: crate::trace::TARGET, "journal"));
        let ticket = match self.queue.journal(journaled).instrument(journal).await {
            Ok(Some(ticket)) => ticket,
            Ok(None) => {
                run.abort(); // sent before: its deliveries are queued already
                return Ok(());
            }
            Err(e) => {
                run.abort(); // not accepted: its deliveries must not go out
                return Err(e.into());
            }
        };
        // The rest is not the caller's to wait for.
        tokio::spawn(
            async move {
                let (deliveries, decided) = run.await.unwrap_or_default();
                self.decided(&event, decided, None);
                self.commit_until_done(Batch {
                    ticket: Some(ticket),
                    queued: deliveries,
                    ..Batch::default()
                })
                .await;
                drop(permit);
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Runs a post event through its hooks, concurrently; returns all
    /// their deliveries (a failing hook has been logged and counted), and
    /// what each hook decided, for the activity log.
    pub(super) async fn run_post(
        &self,
        hooks: &Hooks,
        event: &Event,
        uid: &str,
    ) -> (Vec<Delivery>, Vec<HookActivity>) {
        let results = run::run_all(&self.runner, hooks, event, uid).await;
        let decided = run::activity_of(hooks, &results, false);
        let deliveries = results
            .into_iter()
            .flatten()
            .flat_map(|decision| decision.deliveries)
            .collect();
        (deliveries, decided)
    }
}
