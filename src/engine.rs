//! [`Engine`]: the library's front door.

use crate::activity::{Activity, EventActivity, ReceiverFailure, SeriesView};
use crate::alerts::Alerts;
use crate::archive::{Archive, Archiver};
use crate::config::Config;
use crate::coverage::{Coverage, CoverageError, CoverageReport, ReporterStatus};
use crate::delivery::Sender;
use crate::delivery::{Breaker, Circuit};
use crate::error::Error;
use crate::event::{Event, EventError, Phase};
use crate::hooks::bucket::{EngineReport, Follower, SetState};
use crate::hooks::{Force, HookStatus, Registry};
use crate::hooks::{Watch, WatchOptions};
use crate::ingest::{Ingest, MAX_POSTS_IN_FLIGHT};
use crate::metrics::Metrics;
use crate::outbox::{Told, Workers};
use crate::queue::{DeliveryDetail, DeliveryInfo, DeliveryQuery, DeliveryState, Queue, Replay};
use crate::run::{Runner, Verdict};
use crate::sandbox::Sandbox;
use crate::sources::{SourceStatus, Sources};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wildmatch::WildMatch;

/// A receiver's state, as [`Engine::receivers`] shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ReceiverStatus {
    /// The receiver, as `host:port`.
    pub receiver: String,
    /// Its circuit breaker.
    pub circuit: Circuit,
    /// While the circuit is open: when it lets a probe through (Unix ms).
    pub open_until_ms: Option<u64>,
    /// Failed attempts in a row (retryable failures only).
    pub failures_in_a_row: u32,
    /// Attempts to it in flight now.
    pub in_flight: usize,
    /// Deliveries queued for it, not yet delivered or dead.
    pub pending: u64,
    /// Its dead letters.
    pub dead: u64,
    /// When its oldest pending delivery was queued (Unix ms).
    pub oldest_pending_ms: Option<u64>,
    /// How long ago that was, in milliseconds.
    pub oldest_pending_age_ms: Option<u64>,
    /// Its last failed attempts, newest first (at most
    /// [`FAILURES_PER_RECEIVER`](crate::activity::FAILURES_PER_RECEIVER)),
    /// since the engine started.
    pub recent_failures: Vec<ReceiverFailure>,
}

/// The webhook engine: loaded hooks, the sandbox they run in, and the
/// delivery queue. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    ingest: Arc<Ingest>,
    registry: Arc<Registry>,
    queue: Arc<dyn Queue>,
    workers: Arc<Workers>,
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
    coverage: Coverage,
    sources: Sources,
    _watch: Option<Watch>,
    /// Following the hooks bucket, for an engine on one.
    follower: Option<Follower>,
}

impl Engine {
    /// Sets up the runtime and loads every hook in `config.hooks_dir`.
    ///
    /// A hook that fails to load is reported in [`Engine::hooks`] and the
    /// log; the others still load. Fails only if the settings are wrong,
    /// the folder can't be read, the queue can't be opened or the runtime
    /// can't be set up.
    pub async fn new(config: Config) -> Result<Engine, Error> {
        config.validate()?;
        let sandbox = Arc::new(Sandbox::new(&config)?);
        let metrics = Arc::new(Metrics::default());
        let system = &config.sources.system;
        let alerts = Arc::new(Alerts::new(
            Duration::from_secs(system.window_secs),
            system.enabled,
        ));
        let registry = Arc::new(Registry::new(
            sandbox.clone(),
            config.limits.clone(),
            config.trusted_keys()?,
            metrics.clone(),
            alerts.clone(),
        ));
        let (watch, follower) = match &config.hooks_bucket {
            Some(bucket) => {
                let state = config
                    .state_dir
                    .as_deref()
                    .expect("validated: a hooks bucket has a state folder");
                let follower = Follower::start(registry.clone(), bucket.clone(), state).await?;
                (None, Some(follower))
            }
            None => (load_folder(&config, &registry).await?, None),
        };
        let sender = Sender::new(&config.delivery)?;
        let queue = crate::queue::open(&config.queue_settings()).await?;
        let d = &config.delivery;
        let breaker = Breaker {
            failures: d.breaker_failures.max(1),
            cooldown_ms: d.breaker_cooldown_ms,
            max_cooldown_ms: d.breaker_max_cooldown_ms.max(d.breaker_cooldown_ms),
        };
        let dedup_window = Duration::from_secs(config.dedup_window_secs);
        let activity = Arc::new(Activity::default());
        let workers = Workers::start(
            queue.clone(),
            sender,
            registry.clone(),
            breaker,
            Told {
                metrics: metrics.clone(),
                activity: activity.clone(),
                alerts: alerts.clone(),
            },
            dedup_window.as_millis() as u64,
        );
        let ingest = Arc::new(Ingest {
            registry: registry.clone(),
            runner: Arc::new(Runner::new(sandbox, &config, activity.clone())),
            queue: queue.clone(),
            workers: workers.clone(),
            redact: config
                .redact_results
                .iter()
                .map(|m| WildMatch::new(m))
                .collect(),
            posts: Arc::new(Semaphore::new(MAX_POSTS_IN_FLIGHT)),
            inline: Duration::from_millis(config.post_inline_ms),
            wait_budget: Duration::from_millis(config.delivery.wait_budget_ms),
            dedup_window,
            recent: Default::default(),
            activity: activity.clone(),
            archive: config.archive.as_ref().map(|archive| {
                Archiver::start(
                    queue.clone(),
                    archive,
                    metrics.archived.clone(),
                    metrics.archive_lost.clone(),
                )
            }),
        });
        ingest.resume_journal().await?;
        let sources = Sources::start(&config.sources, &ingest, &metrics, &alerts)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                ingest,
                registry,
                queue,
                workers,
                metrics,
                activity,
                coverage: Coverage::default(),
                sources,
                _watch: watch,
                follower,
            }),
        })
    }

    /// Runs a pre event through the hooks subscribed to it, concurrently,
    /// each within its deadline, and returns the verdict: allowed, or denied
    /// by a hook with its reason. A hook that fails counts as its `on_error`
    /// says (allow by default). Returns once the vetoes are known and
    /// `wait` hooks' deliveries are through (or the wait budget is spent).
    /// The other hooks' deliveries are committed alongside without holding
    /// the verdict back ([`drain`](Engine::drain) waits for them): a crash
    /// before that commit (about a millisecond while the queue works; while
    /// it fails, until it works again), or a [`shutdown`](Engine::shutdown)
    /// whose grace ends first, loses them.
    ///
    /// Cancellation-safe: dropping the future only stops waiting. The same
    /// event sent again within `dedup_window_secs` gets the first verdict.
    pub async fn pre(&self, event: Event) -> Result<Verdict, Error> {
        from_caller(&event, Phase::Pre)?;
        Ok(self.inner.ingest.pre(event).await?)
    }

    /// Accepts a post event for the hooks subscribed to it: returns once it
    /// is committed to the durable queue, so it survives a crash from then
    /// on. If the hooks finish within `post_inline_ms`, what is committed
    /// is their deliveries; otherwise the event itself is journaled, its
    /// hooks finish in the background, and a crash meanwhile runs it again
    /// at start. Deliveries go out in the background. Waits only when too
    /// many post events are already in progress.
    ///
    /// Cancellation-safe: dropping the future only stops waiting. The same
    /// event sent again within `dedup_window_secs` is accepted once.
    ///
    /// An observed event (a change reported after the fact, see
    /// [`Phase::Observed`]) is accepted the same way. A system event, or
    /// any event of a `wasmhooks.*` method, is refused: only the engine
    /// emits those, so a hook can trust them.
    pub async fn post(&self, event: Event) -> Result<(), Error> {
        match event.phase() {
            Phase::Observed => from_caller(&event, Phase::Observed)?,
            _ => from_caller(&event, Phase::Post)?,
        }
        Ok(self.inner.ingest.post(event).await?)
    }

    /// Status of every hook: live or failed, version, last error, counters,
    /// and for a gate (a live hook subscribed to pre events) what it covers.
    pub fn hooks(&self) -> Vec<HookStatus> {
        let mut hooks = self.inner.registry.statuses();
        for hook in &mut hooks {
            if let (Some(subscription), Some(mode), Some(on_error)) =
                (&hook.subscription, hook.mode, hook.on_error)
                && subscription.phases.contains(&Phase::Pre)
            {
                hook.coverage = Some(self.inner.coverage.of_gate(subscription, mode, on_error));
            }
        }
        hooks
    }

    /// Reads the hooks folder again now, every file in it, as if each had
    /// just been written: a hook whose content changed is loaded off to the
    /// side and swapped in, a new version that fails leaves the last good
    /// one serving ([`hooks`](Engine::hooks) says so), a removed hook is
    /// unloaded. For `systemctl reload` (`wasmhooks serve` calls it on
    /// `SIGHUP`), and for engines run with `watch = false`. Fails, changing
    /// nothing, if the folder is missing or cannot be read.
    ///
    /// On a hooks bucket, does nothing: the engine follows the bucket.
    pub async fn reload(&self) -> Result<(), Error> {
        if self.inner.follower.is_some() {
            return Ok(());
        }
        let dir = &self.inner.config.hooks_dir;
        Ok(self.inner.registry.reload(dir).await?)
    }

    /// On a hooks bucket (`[hooks_bucket]`): the set this engine serves,
    /// and the last it refused. `None` for hooks from a folder.
    pub fn hook_set(&self) -> Option<SetState> {
        self.inner.follower.as_ref()?;
        Some(
            self.inner
                .registry
                .snapshot()
                .set
                .clone()
                .unwrap_or_default(),
        )
    }

    /// On a hooks bucket: which set every engine on it serves, as each
    /// reported it to the bucket (any engine can answer for all). `None`
    /// for hooks from a folder.
    pub async fn engines(&self) -> Option<Result<Vec<EngineReport>, Error>> {
        let follower = self.inner.follower.as_ref()?;
        Some(follower.engines().await.map_err(Error::from))
    }

    /// Takes what an orchestrator plugin guards, replacing what `reporter`
    /// reported before (see [`crate::coverage`]). Refused if a field is
    /// missing, too long or out of range.
    pub fn put_coverage(
        &self,
        reporter: &str,
        report: CoverageReport,
    ) -> Result<(), CoverageError> {
        self.inner.coverage.put(reporter, report)
    }

    /// Every source the engine reads by itself (`[sources]`), and how it is
    /// doing.
    pub fn sources(&self) -> Vec<SourceStatus> {
        self.inner.sources.statuses()
    }

    /// Every orchestrator plugin that reported what it guards.
    pub fn coverage(&self) -> Vec<ReporterStatus> {
        self.inner.coverage.reporters()
    }

    /// A receiver whose value changes each time the set of hooks does (a
    /// hook loaded, reloaded, unloaded, or a new version failing), for
    /// callers that want to react to hot reloads.
    pub fn hook_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.registry.changes()
    }

    /// Deliveries queued and not yet delivered or dead, plus post events
    /// whose hooks have not finished.
    pub async fn backlog(&self) -> Result<usize, Error> {
        Ok(self.inner.queue.backlog().await?)
    }

    /// The first `limit` queued deliveries, oldest first: pending, failed
    /// at least once, or dead. [`find_deliveries`](Engine::find_deliveries)
    /// filters by hook and receiver, and pages.
    pub async fn deliveries(
        &self,
        filter: DeliveryState,
        limit: usize,
    ) -> Result<Vec<DeliveryInfo>, Error> {
        self.find_deliveries(DeliveryQuery::new(filter, limit))
            .await
    }

    /// The queued deliveries `query` asks for, oldest first.
    pub async fn find_deliveries(&self, query: DeliveryQuery) -> Result<Vec<DeliveryInfo>, Error> {
        Ok(self.inner.queue.list(query).await?)
    }

    /// One delivery (pending, dead, or delivered within
    /// `delivery.history_hours`) with its latest attempts; `None` if the
    /// queue has no delivery with that id.
    pub async fn delivery(&self, id: &str) -> Result<Option<DeliveryDetail>, Error> {
        Ok(self.inner.queue.get(id.to_owned()).await?)
    }

    /// Every receiver with deliveries queued, dead letters, attempts in
    /// flight or recent failures: its circuit, queue depth and last failed
    /// attempts, by name (`host:port`).
    pub async fn receivers(&self) -> Result<Vec<ReceiverStatus>, Error> {
        let depth = self.inner.queue.depth().await?;
        let mut failures = self.inner.activity.failures();
        let mut views: std::collections::HashMap<_, _> = self
            .inner
            .workers
            .receivers()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        let mut names: Vec<String> = depth
            .keys()
            .chain(views.keys())
            .chain(failures.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let now = crate::util::now_ms();
        Ok(names
            .into_iter()
            .map(|name| {
                let d = depth.get(&name).cloned().unwrap_or_default();
                let view = views.remove(&name);
                let circuit = view.as_ref().map_or(Circuit::Closed, |v| v.circuit);
                ReceiverStatus {
                    circuit,
                    open_until_ms: view.as_ref().and_then(|v| v.open_until),
                    failures_in_a_row: view.as_ref().map_or(0, |v| v.failures),
                    in_flight: view.as_ref().map_or(0, |v| v.in_flight),
                    pending: d.pending,
                    dead: d.dead,
                    oldest_pending_ms: d.oldest_ms,
                    oldest_pending_age_ms: d.oldest_ms.map(|at| now.saturating_sub(at)),
                    recent_failures: failures.remove(&name).unwrap_or_default(),
                    receiver: name,
                }
            })
            .collect())
    }

    /// The last `limit` events accepted (at most
    /// [`MAX_EVENTS`](crate::activity::MAX_EVENTS)), newest first, with what
    /// each hook decided. Kept in memory: empty after a restart.
    pub fn activity(&self, limit: usize) -> Vec<EventActivity> {
        self.inner.activity.recent(limit)
    }

    /// The last hour, per minute, since the engine started: events, each
    /// receiver's attempts and latency, each hook's time. Kept in memory:
    /// empty after a restart.
    pub fn series(&self) -> SeriesView {
        self.inner.activity.series().view(crate::util::now_ms())
    }

    /// The metrics in Prometheus text format (what `GET /metrics` serves).
    pub async fn metrics(&self) -> Result<String, Error> {
        self.inner.metrics.stalls(self.inner.queue.stalls());
        // A queue that cannot count now (JetStream electing a leader) leaves
        // its gauges as last scraped: the rest is still worth serving.
        let depth = match self.inner.queue.depth().await {
            Ok(depth) => Some(depth),
            Err(e) => {
                tracing::warn!(
                    "cannot count the queue for /metrics; its gauges are as last scraped: {e}"
                );
                None
            }
        };
        let warm: Vec<(String, usize)> = self
            .hooks()
            .into_iter()
            .filter_map(|h| Some((h.name, h.warm?)))
            .collect();
        let receivers = self.inner.workers.receivers();
        Ok(self
            .inner
            .metrics
            .encode(depth.as_ref(), &warm, &receivers, crate::util::now_ms()))
    }

    /// Sends again the deliveries `which` names (dead letters, delivered
    /// ones within `delivery.history_hours`, and on SQLite pending ones
    /// that failed), each under its `webhook-id`, with a fresh retry
    /// schedule, due now. None that is in flight is taken. Returns how many
    /// were requeued.
    pub async fn retry(&self, which: Replay) -> Result<usize, Error> {
        let n = self.inner.queue.retry(which, false).await?;
        self.inner.workers.wake();
        Ok(n)
    }

    /// How many deliveries [`retry`](Engine::retry) would requeue now,
    /// changing nothing: what to confirm before a replay.
    pub async fn count_retry(&self, which: Replay) -> Result<usize, Error> {
        Ok(self.inner.queue.retry(which, true).await?)
    }

    /// Deletes dead letters whose delivery was queued more than `older_than`
    /// ago. Returns how many. (The engine does this hourly for
    /// `delivery.dead_letter_days`.)
    pub async fn purge_dead(&self, older_than: Duration) -> Result<usize, Error> {
        let before = crate::util::now_ms().saturating_sub(older_than.as_millis() as u64);
        Ok(self.inner.queue.purge_dead(before).await?)
    }

    /// Waits until every post event accepted so far has run through its
    /// hooks and is committed, and every delivery queued so far is
    /// delivered or dead.
    pub async fn drain(&self) {
        self.inner.ingest.settled().await;
        self.inner.workers.drained().await;
    }

    /// Stops the engine gracefully: no new delivery is claimed, the events
    /// accepted so far are committed, and the attempts in flight finish and
    /// are recorded, within `grace`. Deliveries claimed but not yet sent
    /// stay queued for the next start. Returns whether everything finished
    /// in time (what did not is sent again at the next start, except pre
    /// events' deliveries not yet committed, which are lost and logged as
    /// such). Call it once
    /// no more events come in; the engine sends nothing afterwards.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.sources.stop();
        self.inner.workers.stop();
        let finish = async {
            self.inner.ingest.settled().await;
            self.inner.workers.idle().await;
        };
        let done = tokio::time::timeout(grace, finish).await.is_ok();
        // Other engines on a shared queue take what this one held.
        if let Err(e) = self.inner.queue.release().await {
            tracing::warn!("cannot hand back the deliveries this engine held: {e}");
        }
        done
    }

    /// How long requests have been waiting for the queue's backend now
    /// (NATS JetStream electing a leader after a node was lost; see
    /// `queue.nats.election_wait_ms`), if they are.
    pub fn queue_waiting(&self) -> Option<Duration> {
        self.inner.queue.stalls().waiting
    }

    /// Accepted events kept on this engine's disk now, until NATS JetStream
    /// has a leader again (`queue.nats.spill_after_ms`).
    pub fn queue_kept_locally(&self) -> u64 {
        self.inner.queue.stalls().kept_now
    }

    /// The archive of accepted events (`[archive]`), if it is on.
    pub fn archive(&self) -> Option<Archive> {
        self.inner
            .config
            .archive
            .as_ref()
            .map(|_| Archive::of(self.inner.queue.clone()))
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

/// How the methods of the engine's own events (system events) begin.
const SYSTEM_METHODS: &str = "wasmhooks.";

/// Checks an event a caller sent: of the phase the call takes, and not
/// posing as one of the engine's own.
fn from_caller(event: &Event, expected: Phase) -> Result<(), Error> {
    expect_phase(event, expected)?;
    if event.method().starts_with(SYSTEM_METHODS) {
        return Err(Error::Event(EventError::Field {
            field: "method",
            problem: format!(
                "{} is a method of the engine's own events (wasmhooks.*): callers cannot send one",
                event.method()
            ),
        }));
    }
    Ok(())
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

/// Loads the hooks of `config.hooks_dir`, and watches it if asked.
async fn load_folder(config: &Config, registry: &Arc<Registry>) -> Result<Option<Watch>, Error> {
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
        Some(Watch::start(registry.clone(), dir.clone(), options)?)
    } else {
        None
    };
    registry
        .reconcile(
            dir,
            Force::These(&HashSet::new()),
            &HashSet::new(),
            Duration::ZERO,
        )
        .await?;
    Ok(watch)
}
