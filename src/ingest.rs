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

use crate::activity::{Activity, HookActivity};
use crate::delivery::{Delivery, new_uid, uid_of};
use crate::error::Error;
use crate::event::Event;
use crate::hooks::{Hooks, LiveHook, Registry};
use crate::must_finish::MustFinish;
use crate::outbox::Workers;
use crate::queue::{Batch, Committed, Journaled, Queue, QueueError};
use crate::run::{self, HookFailure, Runner, Verdict};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use wildmatch::WildMatch;

/// Events handed to hooks and not yet committed (post events, and pre
/// events' deliveries); past this, `post()` and `pre()` wait.
pub(crate) const MAX_POSTS_IN_FLIGHT: usize = 4096;

/// Pre verdicts remembered for recognising a pre event sent again; past
/// this, the oldest are forgotten first.
const MAX_RECENT_VERDICTS: usize = 65_536;

/// First and longest pause between tries of a commit that failed.
const COMMIT_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(10));

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
}

/// The pre events seen lately, by key, and their keys oldest first.
#[derive(Default)]
pub(crate) struct RecentVerdicts {
    by_key: HashMap<String, Recent>,
    order: std::collections::VecDeque<(Instant, String)>,
}

/// A pre event seen lately: its verdict, once known.
pub(crate) struct Recent {
    at: Instant,
    verdict: watch::Receiver<Option<Verdict>>,
}

impl Ingest {
    /// The key that recognises an event sent again, and the id its
    /// deliveries' ids derive from.
    fn identify(&self, event: &Event) -> (Option<String>, String) {
        if self.dedup_window.is_zero() {
            return (None, new_uid());
        }
        let (method, call) = (event.method(), event.call_id());
        let key = format!(
            "{}:{method}{}:{call}{}",
            method.len(),
            call.len(),
            event.phase()
        );
        // The id is the key's within one window-long period: copies that
        // slip past recognition still share `webhook-id`s, and the same
        // event sent again much later (a new acceptance) gets new ones.
        let period = crate::util::now_ms() / (self.dedup_window.as_millis() as u64).max(1);
        let uid = uid_of(&format!("{key}@{period}"));
        (Some(key), uid)
    }

    /// Runs a pre event through the hooks subscribed to it and returns the
    /// verdict (see the module's doc).
    pub async fn pre(self: &Arc<Self>, event: Event) -> Result<Verdict, Error> {
        let hooks = self.registry.snapshot().matching(&event);
        if hooks.is_empty() {
            // No WASM call, nothing to queue: nothing to recognise either.
            let verdict = run::decide(&hooks, Vec::new()).verdict;
            self.activity
                .event(&event, Vec::new(), Some(verdict.allowed()));
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
                        Err(_) => Err(Error::Runtime(
                            "the first copy of this pre event failed; send it again".into(),
                        )),
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
        let work = MustFinish::new(async move {
            let results = run::run_all(&ingest.runner, &hooks, &event, &uid).await;
            let decided = run::activity_of(&hooks, &results);
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
                tokio::spawn(async move {
                    let batch = Batch {
                        queued,
                        ..Batch::default()
                    };
                    ingest.commit_until_done(batch).await;
                    drop(permit);
                });
            }
            let verdict = ingest.wait_pre(verdict, waiting).await;
            let decided = run::with_failures(decided, &verdict);
            ingest
                .activity
                .event(&event, decided, Some(verdict.allowed()));
            if let Some(publish) = publish {
                publish.send_replace(Some(verdict.clone()));
            }
            drop(permit);
            verdict
        });
        caught(work, "pre").await
    }

    /// Remembers that the pre event `key` is being decided. `Err` with the
    /// first copy's verdict if it was seen within the window.
    fn remember(
        &self,
        key: &str,
    ) -> Result<watch::Sender<Option<Verdict>>, watch::Receiver<Option<Verdict>>> {
        let mut recent = self.recent.lock().unwrap();
        let recent = &mut *recent;
        // Forget the expired, and the oldest past the bound.
        while let Some((at, _)) = recent.order.front() {
            if at.elapsed() < self.dedup_window && recent.order.len() < MAX_RECENT_VERDICTS {
                break;
            }
            let (at, key) = recent.order.pop_front().expect("not empty");
            if recent.by_key.get(&key).is_some_and(|r| r.at == at) {
                recent.by_key.remove(&key);
            }
        }
        // A first copy whose task died without a verdict does not count.
        if let Some(seen) = recent.by_key.get(key)
            && seen.at.elapsed() < self.dedup_window
            && (seen.verdict.borrow().is_some() || seen.verdict.has_changed().is_ok())
        {
            return Err(seen.verdict.clone());
        }
        let (tx, rx) = watch::channel(None);
        let at = Instant::now();
        recent
            .by_key
            .insert(key.to_owned(), Recent { at, verdict: rx });
        recent.order.push_back((at, key.to_owned()));
        Ok(tx)
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
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(reason))) => reason,
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

    /// Accepts a post event (see the module's doc). Waits only when too
    /// many post events are already in progress.
    pub async fn post(self: &Arc<Self>, mut event: Event) -> Result<(), Error> {
        let hooks = self.registry.snapshot().matching(&event);
        if hooks.is_empty() {
            self.activity.event(&event, Vec::new(), None);
            return Ok(()); // no WASM call for an event nobody wants
        }
        if self.redact.iter().any(|m| m.matches(event.method())) {
            event.redact_result("* obfuscated *");
        }
        let permit = self.place().await;
        let (key, uid) = self.identify(&event);
        let ingest = self.clone();
        // In the caller's task; what is left of it finishes in a task of its
        // own if the caller goes away.
        let work =
            MustFinish::new(
                async move { ingest.accept_post(hooks, event, key, uid, permit).await },
            );
        caught(work, "post").await?
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
    ) -> Result<(), Error> {
        let mut run = MustFinish::new({
            let (ingest, hooks, event, uid) =
                (self.clone(), hooks.clone(), event.clone(), uid.clone());
            async move { ingest.run_post(&hooks, &event, &uid).await }
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
                self.activity.event(&event, decided, None);
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
        let ticket = match self.queue.journal(journaled).await {
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
        tokio::spawn(async move {
            let (deliveries, decided) = run.await.unwrap_or_default();
            self.activity.event(&event, decided, None);
            self.commit_until_done(Batch {
                ticket: Some(ticket),
                queued: deliveries,
                ..Batch::default()
            })
            .await;
            drop(permit);
        });
        Ok(())
    }

    /// Runs a post event through its hooks, concurrently; returns all
    /// their deliveries (a failing hook has been logged and counted), and
    /// what each hook decided, for the activity log.
    async fn run_post(
        &self,
        hooks: &Hooks,
        event: &Event,
        uid: &str,
    ) -> (Vec<Delivery>, Vec<HookActivity>) {
        let results = run::run_all(&self.runner, hooks, event, uid).await;
        let decided = run::activity_of(hooks, &results);
        let deliveries = results
            .into_iter()
            .flatten()
            .flat_map(|decision| decision.deliveries)
            .collect();
        (deliveries, decided)
    }

    /// Commits a batch of what was already acknowledged, trying again with
    /// back-off while the queue fails (a full disk, an I/O error), until it
    /// is in or the engine stops. Then a journaled event runs again at the
    /// next start; a batch without a ticket (a pre event's deliveries) is
    /// lost, and logged as such.
    async fn commit_until_done(&self, batch: Batch) {
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
    pub async fn resume_journal(self: &Arc<Self>) -> Result<(), Error> {
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
            tokio::spawn(async move {
                let (queued, decided) = ingest.run_post(&hooks, &event, &journaled.uid).await;
                ingest.activity.event(&event, decided, None);
                ingest
                    .commit_until_done(Batch {
                        ticket,
                        queued,
                        ..Batch::default()
                    })
                    .await;
                drop(permit);
            });
        }
        Ok(())
    }

    /// A place among the events in progress, held until what the event
    /// became is committed; waits while there are `MAX_POSTS_IN_FLIGHT`.
    async fn place(&self) -> OwnedSemaphorePermit {
        self.posts
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }

    /// Waits until every event accepted so far is committed: post events,
    /// and pre events' deliveries.
    pub async fn settled(&self) {
        let all = self
            .posts
            .acquire_many(MAX_POSTS_IN_FLIGHT as u32)
            .await
            .expect("never closed");
        drop(all);
    }
}

/// An event's work, with a panic in it (a bug in the engine: hooks' own
/// panics are caught per hook) turned into an error for the caller, as a
/// failed task's was.
async fn caught<T: Send + 'static>(work: MustFinish<T>, phase: &str) -> Result<T, Error> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|_| Error::Runtime(format!("the {phase} event's work failed")))
}
