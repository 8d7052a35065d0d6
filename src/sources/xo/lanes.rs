//! Where observed events wait for the engine: bounded lanes, one object's
//! events always in the same lane, so they are accepted in order. The
//! stream never waits for a lane: an event that finds its lane full, or
//! that the engine refuses, opens a gap. Until the next listing closes it,
//! nothing more reaches hooks (what was queued is set aside too), and what
//! hooks knew of each object concerned is kept, so the listing's
//! comparison shows every transition they missed, once.

use super::super::Status;
use super::super::objects::{Key, Known, Objects};
use super::NAME;
use crate::event::Event;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};
use tokio_util::task::AbortOnDropHandle;

/// Lanes: one object's events share one.
const LANES: usize = 8;

/// One observed event waiting for the engine, with what undoes it if lost.
pub(super) struct Pending {
    /// Its place in the order the source saw changes.
    pub seq: u64,
    pub event: Event,
    pub key: Key,
    /// What hooks knew of the object before this event.
    pub before: Known,
}

/// Whether events are being lost, and how many wait in the lanes.
#[derive(Default)]
pub(super) struct Gap {
    open: AtomicBool,
    /// Woken when a gap opens: the session stops reading.
    opened: Notify,
    queued: AtomicUsize,
    /// Woken when the lanes are empty.
    drained: Notify,
}

impl Gap {
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    fn open(&self) {
        if !self.open.swap(true, Ordering::SeqCst) {
            self.opened.notify_one();
        }
    }

    /// Resolves once a gap opens.
    pub(super) async fn opened(&self) {
        loop {
            let notified = self.opened.notified();
            if self.is_open() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until nothing is queued (everything set aside or accepted),
    /// then closes the gap: events flow again.
    pub(super) async fn close(&self) {
        loop {
            let drained = self.drained.notified();
            if self.queued.load(Ordering::SeqCst) == 0 {
                break;
            }
            drained.await;
        }
        self.open.store(false, Ordering::SeqCst);
    }

    fn done(&self) {
        if self.queued.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }
}

/// The lanes, and what they share with the source.
pub(super) struct Lanes {
    senders: Vec<mpsc::Sender<Pending>>,
    _tasks: Vec<AbortOnDropHandle<()>>,
    pub gap: Arc<Gap>,
    objects: Arc<Mutex<Objects>>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

impl Lanes {
    /// Starts the lanes: at most `max_pending` events wait in all.
    pub(super) fn start(
        max_pending: usize,
        ingest: &Arc<Ingest>,
        objects: &Arc<Mutex<Objects>>,
        status: &Arc<Status>,
        metrics: &Arc<Metrics>,
    ) -> Lanes {
        let gap = Arc::new(Gap::default());
        let per_lane = max_pending.div_ceil(LANES).max(1);
        let (senders, tasks) = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(per_lane);
                let task = tokio::spawn(lane(
                    rx,
                    ingest.clone(),
                    objects.clone(),
                    gap.clone(),
                    status.clone(),
                    metrics.clone(),
                ));
                (tx, AbortOnDropHandle::new(task))
            })
            .unzip();
        Lanes {
            senders,
            _tasks: tasks,
            gap,
            objects: objects.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Queues `pending` without waiting; during a gap, or if its lane is
    /// full (which opens one), it is set aside for the next listing.
    pub(super) fn send(&self, pending: Pending) {
        if !self.gap.is_open() {
            let lane = &self.senders[lane_of(&pending.key)];
            self.gap.queued.fetch_add(1, Ordering::SeqCst);
            match lane.try_send(pending) {
                Ok(()) => {
                    self.status.emitted();
                    return;
                }
                Err(mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) => {
                    self.gap.done();
                    self.gap.open();
                    self.metrics.source_failure(NAME, "overflow");
                    set_aside(&self.objects, &self.status, p);
                    return;
                }
            }
        }
        set_aside(&self.objects, &self.status, pending);
    }
}

impl Lanes {
    /// Queues `pending`, waiting for room in its lane: for a listing's
    /// differences, which are bounded, and which the stream is not read
    /// for meanwhile. During a gap it is set aside.
    pub(super) async fn send_waiting(&self, pending: Pending) {
        if self.gap.is_open() {
            set_aside(&self.objects, &self.status, pending);
            return;
        }
        let lane = &self.senders[lane_of(&pending.key)];
        self.gap.queued.fetch_add(1, Ordering::SeqCst);
        match lane.send(pending).await {
            Ok(()) => self.status.emitted(),
            Err(mpsc::error::SendError(p)) => {
                self.gap.done();
                set_aside(&self.objects, &self.status, p);
            }
        }
    }
}

/// The lane of an object: the same for all of its events.
fn lane_of(key: &Key) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() as usize % LANES
}

fn set_aside(objects: &Mutex<Objects>, status: &Status, p: Pending) {
    objects.lock().unwrap().lost(p.key, p.seq, p.before);
    status.dropped();
}

/// One lane: hands its events to the engine, one at a time, in order.
async fn lane(
    mut rx: mpsc::Receiver<Pending>,
    ingest: Arc<Ingest>,
    objects: Arc<Mutex<Objects>>,
    gap: Arc<Gap>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) {
    while let Some(pending) = rx.recv().await {
        if gap.is_open() {
            set_aside(&objects, &status, pending);
        } else {
            let method = pending.event.method().to_owned();
            if let Err(e) = ingest.post(pending.event.clone()).await {
                tracing::warn!(
                    source = NAME, %method,
                    "the engine did not take an observed event ({e}); the next listing finds it again"
                );
                metrics.source_failure(NAME, "queue");
                gap.open();
                set_aside(&objects, &status, pending);
            }
        }
        gap.done();
    }
}
