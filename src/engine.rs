//! [`Engine`]: the library's front door.

use crate::config::{Config, HookConfig};
use crate::delivery::{PolicyLookup, Sender, new_uid};
use crate::dispatch::{Dispatcher, Runner, Verdict};
use crate::error::Error;
use crate::event::{Event, Phase};
use crate::metrics::Metrics;
use crate::outbox::{DeliveryInfo, Filter, Outbox, Retry, SqliteOutbox};
use crate::registry::{HookStatus, Hooks, Registry};
use crate::sandbox::{Sandbox, Subscription};
use crate::watch::{Watch, WatchOptions};
use crate::workers::{Breaker, Workers};
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wildmatch::WildMatch;

/// Post events handed to hooks and not yet finished; past this, `post()` waits.
const MAX_POSTS_IN_FLIGHT: usize = 4096;

/// The webhook engine: loaded hooks, the sandbox they run in, and the
/// delivery queue. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    dispatcher: Arc<Dispatcher>,
    workers: Arc<Workers>,
    metrics: Arc<Metrics>,
    redact: Vec<WildMatch>,
    posts: Arc<Semaphore>,
    _watch: Option<Watch>,
}

impl Engine {
    /// Sets up the runtime and loads every hook in `config.hooks_dir`.
    ///
    /// A hook that fails to load is reported in [`Engine::hooks`] and the
    /// log; the others still load. Fails only if the folder can't be read
    /// or the runtime can't be set up.
    pub async fn new(config: Config) -> Result<Engine, Error> {
        let sandbox = Arc::new(Sandbox::new(&config).map_err(Error::Runtime)?);
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(
            sandbox.clone(),
            config.limits.clone(),
            metrics.clone(),
        ));
        let dir = &config.hooks_dir;
        if !config.watch && !dir.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder");
            return Err(Error::HooksDir {
                path: dir.clone(),
                source,
            });
        }
        let watch = if config.watch {
            let options = WatchOptions {
                settle: Duration::from_millis(config.settle_ms),
                rescan: Duration::from_millis(config.rescan_ms.max(100)),
            };
            Some(Watch::start(registry.clone(), dir.clone(), options).map_err(Error::Runtime)?)
        } else {
            None
        };
        registry
            .reconcile(dir, &HashSet::new(), &HashSet::new(), Duration::ZERO)
            .await?;
        let live = registry.clone();
        let lookup: PolicyLookup =
            Box::new(move |hook| Some(live.snapshot().live.get(hook)?.policy.clone()));
        let sender = Arc::new(Sender::new(&config.delivery, lookup).map_err(Error::Config)?);
        let (state_dir, fsync) = (config.state_dir.clone(), config.fsync);
        let outbox: Arc<dyn Outbox> =
            tokio::task::spawn_blocking(move || SqliteOutbox::open(state_dir.as_deref(), fsync))
                .await
                .map_err(|e| Error::Runtime(e.to_string()))??;
        let d = &config.delivery;
        let breaker = Breaker {
            failures: d.breaker_failures.max(1),
            cooldown_ms: d.breaker_cooldown_ms,
            max_cooldown_ms: d.breaker_max_cooldown_ms.max(d.breaker_cooldown_ms),
        };
        let workers = Workers::start(outbox.clone(), sender.clone(), breaker, metrics.clone());
        let dispatcher = Arc::new(Dispatcher {
            registry,
            runner: Runner::new(sandbox, &config),
            outbox,
            workers: workers.clone(),
            sender,
            wait_budget: Duration::from_millis(config.delivery.wait_budget_ms),
        });
        let redact = config
            .redact_results
            .iter()
            .map(|m| WildMatch::new(m))
            .collect();
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                dispatcher,
                workers,
                metrics,
                redact,
                posts: Arc::new(Semaphore::new(MAX_POSTS_IN_FLIGHT)),
                _watch: watch,
            }),
        };
        engine.resume_journal().await?;
        Ok(engine)
    }

    /// Runs again the post events accepted before a crash whose hooks had
    /// not finished, on the hooks of the same names as now loaded.
    async fn resume_journal(&self) -> Result<(), Error> {
        let dispatcher = &self.inner.dispatcher;
        let unfinished = dispatcher.outbox.unfinished().await?;
        if !unfinished.is_empty() {
            tracing::info!(
                events = unfinished.len(),
                "running again the post events accepted before the last stop"
            );
        }
        let snapshot = dispatcher.registry.snapshot();
        for journaled in unfinished {
            let event = match Event::from_json(journaled.payload.as_bytes()) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(ticket = journaled.ticket, "journaled event dropped: {e}");
                    dispatcher
                        .outbox
                        .commit(Some(journaled.ticket), vec![], vec![])
                        .await?;
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
            self.spawn_post(hooks, event, journaled.ticket, journaled.uid)
                .await;
        }
        Ok(())
    }

    /// Runs a journaled post event in the background, bounded by the
    /// posts-in-flight limit.
    async fn spawn_post(&self, hooks: Hooks, event: Event, ticket: i64, uid: String) {
        let permit = self.post_permit().await;
        let dispatcher = self.inner.dispatcher.clone();
        tokio::spawn(async move {
            dispatcher.post(hooks, event, ticket, uid).await;
            drop(permit);
        });
    }

    /// A place among the post events in progress; waits while there are
    /// `MAX_POSTS_IN_FLIGHT`.
    async fn post_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        let posts = self.inner.posts.clone();
        posts.acquire_owned().await.expect("never closed")
    }

    /// Runs a pre event through the hooks subscribed to it, concurrently,
    /// each within its deadline, and returns the verdict: allowed, or denied
    /// by a hook with its reason. A hook that fails counts as its `on_error`
    /// says (allow by default).
    pub async fn pre(&self, event: Event) -> Result<Verdict, Error> {
        expect_phase(&event, Phase::Pre)?;
        Ok(self.inner.dispatcher.pre(event).await)
    }

    /// Accepts a post event for the hooks subscribed to it: returns once it
    /// is committed to the durable queue, so it survives a crash from then
    /// on. If the hooks finish within `post_inline_ms`, what is committed
    /// is their deliveries; otherwise the event itself is journaled, its
    /// hooks finish in the background, and a crash meanwhile runs it again
    /// at start. Deliveries go out in the background. Waits only when too
    /// many post events are already in progress.
    pub async fn post(&self, mut event: Event) -> Result<(), Error> {
        expect_phase(&event, Phase::Post)?;
        let hooks = self.inner.dispatcher.matching(&event);
        if hooks.is_empty() {
            return Ok(()); // no WASM call for an event nobody wants
        }
        if self.inner.redact.iter().any(|m| m.matches(event.method())) {
            event.redact_result("* obfuscated *");
        }
        let permit = self.post_permit().await;
        let uid = new_uid();
        let dispatcher = self.inner.dispatcher.clone();
        let mut run = tokio::spawn({
            let (dispatcher, hooks) = (dispatcher.clone(), hooks.clone());
            let (event, uid) = (event.clone(), uid.clone());
            async move { dispatcher.run_post(&hooks, &event, &uid).await }
        });
        // Hooks that finish quickly: their deliveries are the one write.
        let window = Duration::from_millis(self.inner.config.post_inline_ms);
        if let Ok(joined) = tokio::time::timeout(window, &mut run).await {
            let deliveries = joined.map_err(|e| Error::Runtime(e.to_string()))?;
            return Ok(dispatcher.submit(None, deliveries).await?);
        }
        // Slower ones: journal the event, so it survives a crash, and return.
        let names = hooks.iter().map(|h| h.name().to_owned()).collect();
        let payload = event.payload().to_owned();
        let ticket = match dispatcher.outbox.journal(uid, names, payload).await {
            Ok(ticket) => ticket,
            Err(e) => {
                run.abort(); // not accepted: its deliveries must not go out
                return Err(e.into());
            }
        };
        tokio::spawn(async move {
            match run.await {
                Ok(deliveries) => dispatcher.post_commit(ticket, &event, deliveries).await,
                Err(e) => tracing::error!("post event task failed ({e}); it runs again at restart"),
            }
            drop(permit);
        });
        Ok(())
    }

    /// Status of every hook: live or failed, version, last error, counters.
    pub fn hooks(&self) -> Vec<HookStatus> {
        self.inner.dispatcher.registry.statuses()
    }

    /// A receiver whose value changes each time the set of hooks does (a
    /// hook loaded, reloaded, unloaded, or a new version failing), for
    /// callers that want to react to hot reloads.
    pub fn hook_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.dispatcher.registry.changes()
    }

    /// Deliveries queued and not yet delivered or dead, plus post events
    /// whose hooks have not finished.
    pub async fn backlog(&self) -> Result<usize, Error> {
        Ok(self.inner.dispatcher.outbox.backlog().await?)
    }

    /// Queued deliveries, oldest first: pending, failed at least once, or dead.
    pub async fn deliveries(
        &self,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, Error> {
        Ok(self.inner.dispatcher.outbox.list(filter, limit).await?)
    }

    /// The metrics in Prometheus text format (what `GET /metrics` serves).
    pub async fn metrics(&self) -> Result<String, Error> {
        let depth = self.inner.dispatcher.outbox.depth().await?;
        let warm: Vec<(String, usize)> = self
            .hooks()
            .into_iter()
            .filter_map(|h| Some((h.name, h.warm?)))
            .collect();
        Ok(self
            .inner
            .metrics
            .encode(&depth, &warm, crate::delivery::now_ms()))
    }

    /// Sends dead letters again (one, or all) with a fresh retry schedule.
    /// Returns how many were requeued.
    pub async fn retry(&self, which: Retry) -> Result<usize, Error> {
        let n = self.inner.dispatcher.outbox.retry(which).await?;
        self.inner.workers.wake();
        Ok(n)
    }

    /// Deletes dead letters whose delivery was queued more than `older_than`
    /// ago. Returns how many. (The engine does this hourly for
    /// `delivery.dead_letter_days`.)
    pub async fn purge_dead(&self, older_than: Duration) -> Result<usize, Error> {
        let before = crate::delivery::now_ms().saturating_sub(older_than.as_millis() as u64);
        Ok(self.inner.dispatcher.outbox.purge_dead(before).await?)
    }

    /// Waits until every post event accepted so far has run through its
    /// hooks and every delivery queued so far is delivered or failed.
    pub async fn drain(&self) {
        let posts = self
            .inner
            .posts
            .acquire_many(MAX_POSTS_IN_FLIGHT as u32)
            .await
            .expect("never closed");
        drop(posts);
        self.inner.workers.drained().await;
    }

    /// The settings the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.workers.stop();
    }
}

fn expect_phase(event: &Event, expected: Phase) -> Result<(), Error> {
    if event.phase() == expected {
        Ok(())
    } else {
        Err(Error::WrongPhase {
            method: event.method().to_owned(),
            expected,
            actual: event.phase(),
        })
    }
}

/// What a dry run found: see [`dry_run`].
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The hook's name.
    pub hook: String,
    /// What `setup` returned.
    pub subscription: Subscription,
    /// Whether the event matches the subscription.
    pub matches: bool,
    /// What `handle` returned, if the event matched.
    pub outcome: Option<DryOutcome>,
}

/// A hook's outcome, as a dry run shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DryOutcome {
    /// The deliveries it asked for (not sent).
    pub deliveries: Vec<DryDelivery>,
    /// Its veto, for a pre event.
    pub deny: Option<String>,
}

/// One delivery a dry run would have sent.
#[derive(Debug, Clone, Serialize)]
pub struct DryDelivery {
    /// The receiver.
    pub url: String,
    /// The request headers.
    pub headers: Vec<(String, String)>,
    /// The body: parsed JSON when it is JSON, else text.
    pub body: serde_json::Value,
}

/// Loads one hook file with its `NAME.toml` (or `settings` if given), runs
/// `setup` and, if the event matches, `handle`. Sends nothing.
pub async fn dry_run(
    config: &Config,
    wasm: &Path,
    settings: Option<HookConfig>,
    event: &Event,
) -> Result<DryRun, Error> {
    let sandbox = Arc::new(Sandbox::new(config).map_err(Error::Runtime)?);
    let registry = Registry::new(sandbox.clone(), config.limits.clone(), Default::default());
    let hook = registry.load(wasm, settings).await?;
    let matches = hook.wants(event);
    let outcome = if matches {
        let decision = Runner::new(sandbox, config)
            .run(&hook, event, &new_uid())
            .await?;
        Some(DryOutcome {
            deliveries: decision
                .deliveries
                .into_iter()
                .map(|d| DryDelivery {
                    url: d.url.to_string(),
                    headers: d
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: serde_json::from_slice(&d.body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&d.body).into_owned())
                    }),
                })
                .collect(),
            deny: decision.deny,
        })
    } else {
        None
    };
    Ok(DryRun {
        hook: hook.name().to_owned(),
        subscription: hook.subscription.clone(),
        matches,
        outcome,
    })
}
