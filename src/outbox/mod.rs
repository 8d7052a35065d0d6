//! The one delivery path. Every delivery, a `wait` hook's included, is
//! committed to the queue and sent from here: claim (owned by this engine
//! run), attempt (route, guard, sign, POST, classify), record. Per-receiver
//! slots and the circuit breaker live here and nowhere else, so a slow or
//! failing receiver holds up only its own deliveries.
//!
//! This file is the outbox and its life (start, stop, drain); beside it:
//! `slots.rs` (per-receiver slots, the in-memory ready lines and the room
//! to claim), `pump.rs` (claiming due deliveries, launching held ones,
//! purging old records), `commit.rs` (new deliveries committed, and sent at
//! once when there is room), `attempt.rs` (one attempt, its outcome
//! recorded, and the callers waiting for it).

mod attempt;
mod commit;
mod pump;
mod slots;

pub(crate) use attempt::WaitOutcome;
use slots::{Slot, Slots};

use crate::activity::{Activity, ReceiverFailure};
use crate::alerts::Alerts;
use crate::delivery::history::engine_name;
use crate::delivery::schedule::{gave_up, retry_delay};
use crate::delivery::{
    Attempt, AttemptRecord, Breaker, CircuitState, Delivery, DeliveryPolicy, PolicySource,
    ReceiverView, Sender,
};
use crate::metrics::Metrics;
use crate::must_finish::MustFinish;
use crate::queue::{Batch, Claimed, Committed, Finish, Queue, QueueError, Room};
use crate::util::now_ms;
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};

/// Longest the pump sleeps without looking at the queue, so that changes
/// from outside (`wasmhooks deliveries retry` in another process) are seen.
const POLL: Duration = Duration::from_secs(1);

/// Most deliveries claimed in one go.
const CLAIM_BATCH: usize = 512;

/// First and longest pause between tries of recording an attempt.
const FINISH_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(10));

/// How often dead letters and accepted keys past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Deliveries kept claimed in memory per receiver, as a multiple of
/// `per_receiver_concurrency` (in flight included), so that a finishing
/// attempt hands its slot to the next one without a trip to the queue: one
/// claim serves many deliveries, whatever the backlog.
const READY_FACTOR: usize = 3;

/// Each hook's policy now, for attempts: the live hook's, or for a hook
/// since unloaded the last one this run saw.
struct Policies {
    source: Arc<dyn PolicySource>,
    known: Mutex<HashMap<String, Arc<DeliveryPolicy>>>,
}

impl Policies {
    fn current(&self, hook: &str) -> Option<Arc<DeliveryPolicy>> {
        let live = self.source.policy(hook);
        let mut known = self.known.lock().unwrap();
        match live {
            Some(policy) => {
                if !known.get(hook).is_some_and(|k| Arc::ptr_eq(k, &policy)) {
                    if known.len() >= 4096 {
                        known.clear(); // hook names come from files: stay bounded
                    }
                    known.insert(hook.to_owned(), policy.clone());
                }
                Some(policy)
            }
            None => known.get(hook).cloned(),
        }
    }
}

/// Most deliveries whose last failed attempt is remembered, to link the
/// next one to it in their trace; older ones' next attempts go unlinked.
const MAX_LINKED: usize = 4096;

/// Where the outbox tells what happens to deliveries: the metrics, the
/// console's activity log, and the engine's alerts.
pub(crate) struct Told {
    pub metrics: Arc<Metrics>,
    pub activity: Arc<Activity>,
    pub alerts: Arc<Alerts>,
}

pub(crate) struct Workers {
    queue: Arc<dyn Queue>,
    sender: Sender,
    policies: Policies,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    /// Where failed attempts are noted for operators.
    activity: Arc<Activity>,
    /// Where circuits opening and closing, and dead letters, are raised.
    alerts: Arc<Alerts>,
    slots: Mutex<Slots>,
    /// Callers waiting for a delivery's first final outcome, by id.
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<WaitOutcome>>>>,
    /// With tracing on, the span of each delivery's last failed attempt,
    /// which its next attempt links to: the latest `MAX_LINKED` only.
    retried: Mutex<hashlink::LruCache<String, opentelemetry::trace::SpanContext>>,
    wake: Notify,
    /// Stops the pump when the engine is dropped.
    stop: tokio_util::sync::CancellationToken,
    /// Bumped whenever an attempt finishes, for [`Workers::drained`].
    progress: watch::Sender<u64>,
    /// Attempts launched and not yet recorded, for [`Workers::idle`].
    running: watch::Sender<usize>,
    /// How long accepted events' keys are kept (ms); 0: not at all.
    keys_ms: u64,
    /// Which engine this is, in attempt records.
    engine: String,
}

impl Workers {
    /// Starts the pump on the current tokio runtime.
    pub(crate) fn start(
        queue: Arc<dyn Queue>,
        sender: Sender,
        policies: Arc<dyn PolicySource>,
        breaker: Breaker,
        told: Told,
        keys_ms: u64,
    ) -> Arc<Workers> {
        let Told {
            metrics,
            activity,
            alerts,
        } = told;
        let workers = Arc::new(Workers {
            queue,
            sender,
            policies: Policies {
                source: policies,
                known: Mutex::default(),
            },
            breaker,
            metrics,
            activity,
            alerts,
            slots: Mutex::default(),
            waiters: Mutex::default(),
            retried: Mutex::new(hashlink::LruCache::new(MAX_LINKED)),
            wake: Notify::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            progress: watch::channel(0).0,
            running: watch::channel(0).0,
            keys_ms,
            engine: engine_name(),
        });
        tokio::spawn(workers.clone().pump());
        tokio::spawn(workers.clone().purge_old());
        workers
    }

    /// Stops claiming deliveries; attempts in flight finish and are recorded.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether [`Workers::stop`] was called: the engine is going away.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Tells the pump that deliveries may be due (new ones were committed).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves once the queue holds nothing pending: every delivery sent or dead.
    pub(crate) async fn drained(&self) {
        let mut progress = self.progress.subscribe();
        loop {
            match self.queue.backlog().await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("cannot read the queue: {e}");
                    return;
                }
            }
            let _ = tokio::time::timeout(POLL, progress.changed()).await;
            // Counting the backlog scans it: not after every attempt.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resolves once no attempt is in flight (each launched one recorded).
    pub(crate) async fn idle(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }

    /// Per receiver being sent to or failing: attempts in flight, and
    /// whether its circuit is open. For metrics.
    pub(crate) fn receivers(&self) -> Vec<ReceiverView> {
        let now = now_ms();
        let slots = self.slots.lock().unwrap();
        slots
            .receivers
            .iter()
            .map(|(name, r)| ReceiverView {
                name: name.clone(),
                in_flight: r.in_flight,
                circuit: r.circuit.circuit(&self.breaker, now),
                open_until: r.circuit.open_until(now),
                failures: r.circuit.failures(),
            })
            .collect()
    }
}
