//! Acceptance: the one place an event enters the engine.
//!
//! Once the engine decides to take an event, the rest runs in the caller's
//! task while the caller waits for its answer ([`MustFinish`]), and in a
//! task of its own if the caller goes away (a client that disconnects, a
//! timeout): that stops the waiting and changes nothing else. An event is
//! committed once, under one id:
//!
//! - An event recognised as sent before (same method, call id and phase,
//!   within `dedup_window_secs`) is answered as the first one was, without
//!   a second set of deliveries: a post event by its key in the queue, a pre
//!   event by its verdict, kept in memory.
//! - A post event is acknowledged only once what it became is committed:
//!   its hooks' deliveries if they finish within `post_inline_ms`, else the
//!   event itself (journaled). A journaled event's deliveries are committed
//!   when its hooks finish, retried with back-off while the queue fails
//!   (a full disk), so what was acknowledged is never dropped.
//! - A pre event's verdict waits for the hooks' vetoes and for `wait`
//!   hooks' deliveries' first final outcome (within `wait_budget_ms`), not
//!   for the commit of the other hooks' deliveries: those are committed
//!   alongside, retried with back-off while the queue fails, and `drain()`
//!   waits for them. A crash before that commit (about a commit long while
//!   the queue works; while it fails, until it works again), or a stop
//!   that does not wait for them, loses them, with an error logged: a pre
//!   event's notifications, never a post event and never a `wait`
//!   delivery.

use crate::activity::{Activity, Allowed, HookActivity};
use crate::archive::Archiver;
use crate::event::{Event, Phase};
use crate::hooks::Registry;
use crate::must_finish::MustFinish;
use crate::outbox::Workers;
use crate::queue::Queue;
use crate::run::Runner;
use crate::trace;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wildmatch::WildMatch;

mod dedup;
mod error;
mod journal;
mod post;
mod pre;

pub(crate) use dedup::RecentVerdicts;
pub(crate) use error::IngestError;

/// Events handed to hooks and not yet committed (post events, and pre
/// events' deliveries); past this, `post()` and `pre()` wait.
pub(crate) const MAX_POSTS_IN_FLIGHT: usize = 4096;

pub(crate) struct Ingest {
    pub registry: Arc<Registry>,
    pub runner: Arc<Runner>,
    pub queue: Arc<dyn Queue>,
    pub workers: Arc<Workers>,
    pub redact: Vec<WildMatch>,
    /// Events in progress: each holds a permit until what it became is
    /// committed.
    pub posts: Arc<Semaphore>,
    pub inline: Duration,
    pub wait_budget: Duration,
    /// How long an event is recognised when sent again; zero: never.
    pub dedup_window: Duration,
    pub recent: Mutex<RecentVerdicts>,
    /// What the console shows of the last events.
    pub activity: Arc<Activity>,
    /// Where every accepted event is kept, with `[archive]`.
    pub archive: Option<Archiver>,
}

impl Ingest {
    /// A place among the events in progress, held until what the event
    /// became is committed; waits while there are `MAX_POSTS_IN_FLIGHT`.
    pub(super) async fn place(&self) -> OwnedSemaphorePermit {
        self.posts
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }

    /// Records what an accepted event's hooks decided (`verdict` for a pre
    /// event): in the console's log, and in the archive if there is one.
    pub(super) fn decided(
        &self,
        event: &Event,
        hooks: Vec<HookActivity>,
        verdict: Option<Allowed>,
    ) {
        if let Some(archive) = &self.archive {
            archive.record(event, hooks.clone(), verdict.clone());
        }
        self.activity.event(event, hooks, verdict);
    }

    /// Waits until every event accepted so far is committed: post events,
    /// and pre events' deliveries.
    pub(crate) async fn settled(&self) {
        let all = self
            .posts
            .acquire_many(MAX_POSTS_IN_FLIGHT as u32)
            .await
            .expect("never closed");
        drop(all);
        if let Some(archive) = &self.archive {
            archive.flush().await;
        }
    }
}

/// The span of an event's path, from acceptance to commit (see
/// [`crate::trace`]), with how many hooks it goes to: the caller's trace
/// continued, if it gave one.
fn span_of(event: &Event, hooks: usize) -> tracing::Span {
    let span = trace::span(|| {
        tracing::info_span!(
            target: trace::TARGET,
            "ingest",
            otel.kind = "server",
            wasmhooks.method = event.method(),
            wasmhooks.phase = %event.phase(),
            wasmhooks.call_id = event.call_id(),
            wasmhooks.hooks = hooks as i64,
            wasmhooks.allowed = tracing::field::Empty,
        )
    });
    if let Some(traceparent) = event.traceparent() {
        trace::continue_from(&span, traceparent);
    }
    span
}

/// An event's work, with a panic in it (a bug in the engine: hooks' own
/// panics are caught per hook) turned into an error for the caller, as a
/// failed task's was.
async fn caught<T: Send + 'static>(work: MustFinish<T>, phase: Phase) -> Result<T, IngestError> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|_| IngestError::Panicked { phase })
}
