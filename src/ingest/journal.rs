//! Committing what was acknowledged, and running again at start the post
//! events whose hooks had not finished.

use super::{Ingest, IngestError};
use crate::event::Event;
use crate::hooks::Hooks;
use crate::queue::{Batch, QueueError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// First and longest pause between tries of a commit that failed.
const COMMIT_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(10));

impl Ingest {
    /// Commits a batch of what was already acknowledged, trying again with
    /// back-off while the queue fails (a full disk, an I/O error), until it
    /// is in or the engine stops. Then a journaled event runs again at the
    /// next start; a batch without a ticket (a pre event's deliveries) is
    /// lost, and logged as such.
    pub(super) async fn commit_until_done(&self, batch: Batch) {
        let mut pause = COMMIT_RETRY.0;
        loop {
            let attempt = Batch {
                ticket: batch.ticket,
                key: batch.key.clone(),
                claimed: Vec::new(),
                queued: batch.queued.clone(),
            };
            match self.workers.submit(attempt).await {
                Ok(_) => return,
                // Going away: a journaled event runs again at the next start.
                Err(e) if matches!(e, QueueError::Closed) || self.workers.stopped() => {
                    if batch.ticket.is_none() && !batch.queued.is_empty() {
                        let hooks: std::collections::BTreeSet<&str> =
                            batch.queued.iter().map(|d| &*d.hook).collect();
                        tracing::error!(
                            deliveries = batch.queued.len(),
                            ?hooks,
                            "a pre event's deliveries are lost: the engine stopped before they could be queued ({e})"
                        );
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(
                        deliveries = batch.queued.len(),
                        "cannot queue deliveries already accepted ({e}); trying again in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(COMMIT_RETRY.1);
                }
            }
        }
    }

    /// Runs again the post events accepted before a crash whose hooks had
    /// not finished, on the hooks of the same names as now loaded.
    pub(crate) async fn resume_journal(self: &Arc<Self>) -> Result<(), IngestError> {
        let unfinished = self.queue.unfinished().await?;
        if !unfinished.is_empty() {
            tracing::info!(
                events = unfinished.len(),
                "running again the post events accepted before the last stop"
            );
        }
        let snapshot = self.registry.snapshot();
        for journaled in unfinished {
            let ticket = Some(journaled.ticket);
            let event = match Event::from_json(journaled.payload.as_bytes()) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(ticket = journaled.ticket, "journaled event dropped: {e}");
                    self.commit_until_done(Batch {
                        ticket,
                        ..Batch::default()
                    })
                    .await;
                    continue;
                }
            };
            let hooks: Hooks = journaled
                .hooks
                .iter()
                .filter_map(|name| {
                    let hook = snapshot.live.get(name).cloned();
                    if hook.is_none() {
                        tracing::warn!(hook = %name, method = event.method(), call_id = event.call_id(), "hook is no longer loaded; it misses an event accepted before the last stop");
                    }
                    hook
                })
                .collect();
            let permit: OwnedSemaphorePermit = self.place().await;
            let ingest = self.clone();
            // A trace of its own: the caller's context is not journaled.
            let span = super::span_of(&event, hooks.len());
            let resumed = async move {
                let (queued, decided) = ingest.run_post(&hooks, &event, &journaled.uid).await;
                ingest.decided(&event, decided, None);
                ingest
                    .commit_until_done(Batch {
                        ticket,
                        queued,
                        ..Batch::default()
                    })
                    .await;
                drop(permit);
            };
            tokio::spawn(tracing::Instrument::instrument(resumed, span));
        }
        Ok(())
    }
}
