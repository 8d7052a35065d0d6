//! The one delivery path. Every delivery, a `wait` hook's included, is
//! committed to the queue and sent from here: claim (owned by this engine
//! run), attempt (route, guard, sign, POST, classify), record. Per-receiver
//! slots and the circuit breaker live here and nowhere else, so a slow or
//! failing receiver holds up only its own deliveries.

use crate::activity::{Activity, ReceiverFailure};
use crate::delivery::schedule::{gave_up, retry_delay};
use crate::delivery::{Attempt, Delivery, DeliveryPolicy, Sender};
use crate::hooks::Registry;
use crate::metrics::{AttemptResult, Metrics};
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

/// What the workers know about one receiver.
#[derive(Debug, Default)]
struct ReceiverState {
    in_flight: usize,
    /// Claimed deliveries waiting for one of its slots, oldest first.
    ready: std::collections::VecDeque<Claimed>,
    /// Places in `ready` promised to deliveries being committed.
    reserved: usize,
    /// Failed attempts in a row (retryable failures only: a 4xx means it is up).
    failures: u32,
    /// While set and in the future, its circuit is open: nothing is sent.
    open_until: Option<u64>,
    /// The current pause; doubles each time a probe fails.
    cooldown_ms: u64,
}

impl ReceiverState {
    /// Deliveries claimed for it and waiting for a slot, places reserved included.
    fn held(&self) -> usize {
        self.ready.len() + self.reserved
    }
}

/// Deliveries being sent, in all and per receiver, under one lock.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    /// Claimed deliveries waiting in `ready` queues, and places reserved
    /// there, in all.
    ready: usize,
    receivers: HashMap<String, ReceiverState>,
}

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breaker {
    /// Failed attempts in a row that open a receiver's circuit.
    pub failures: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

/// What the metrics and the status API show of a receiver.
pub(crate) struct ReceiverView {
    pub name: String,
    pub in_flight: usize,
    /// Its circuit is open: its deliveries wait.
    pub open: bool,
    /// Until when it is open (Unix ms).
    pub open_until: Option<u64>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Its pause is over but it has not answered since: one probe at a time.
    pub half_open: bool,
}

/// How a `wait` delivery's wait ended: delivered, or why not.
pub(crate) type WaitOutcome = Result<(), String>;

/// Each hook's policy now, for attempts: the live hook's, or for a hook
/// since unloaded the last one this run saw.
struct Policies {
    registry: Arc<Registry>,
    known: Mutex<HashMap<String, Arc<DeliveryPolicy>>>,
}

impl Policies {
    fn current(&self, hook: &str) -> Option<Arc<DeliveryPolicy>> {
        let live = self
            .registry
            .snapshot()
            .live
            .get(hook)
            .map(|h| h.policy.clone());
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

pub(crate) struct Workers {
    queue: Arc<dyn Queue>,
    sender: Sender,
    policies: Policies,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    /// Where failed attempts are noted for operators.
    activity: Arc<Activity>,
    slots: Mutex<Slots>,
    /// Callers waiting for a delivery's first final outcome, by id.
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<WaitOutcome>>>>,
    wake: Notify,
    /// Stops the pump when the engine is dropped.
    stop: tokio_util::sync::CancellationToken,
    /// Bumped whenever an attempt finishes, for [`Workers::drained`].
    progress: watch::Sender<u64>,
    /// Attempts launched and not yet recorded, for [`Workers::idle`].
    running: watch::Sender<usize>,
    /// How long accepted events' keys are kept (ms); 0: not at all.
    keys_ms: u64,
}

/// A sending slot for one receiver, given back when dropped (with the
/// attempt's result for the breaker, if it got that far), so a task that
/// is cancelled or panics never leaks one.
struct Slot {
    workers: Arc<Workers>,
    receiver: String,
    up: Option<bool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let workers = self.workers.clone();
        workers.release_slot(&self.receiver, self.up);
    }
}

/// A place reserved in a receiver's ready queue for a delivery being
/// committed as claimed; given back when dropped unfilled.
struct Hold {
    workers: Arc<Workers>,
    receiver: String,
    filled: bool,
}

impl Hold {
    /// Gives the place to `claimed`, now committed: it goes out as soon as
    /// its receiver has a slot. The place becomes its slot or its entry in
    /// the ready queue under one lock, so no one else sees it free meanwhile.
    fn fill(mut self, claimed: Claimed) {
        self.filled = true;
        let receiver = std::mem::take(&mut self.receiver);
        self.workers
            .dispatch_with(claimed, |slots| Hold::give_back(slots, &receiver));
    }

    fn give_back(slots: &mut Slots, receiver: &str) {
        slots.ready -= 1;
        if let Some(r) = slots.receivers.get_mut(receiver) {
            r.reserved -= 1;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.filled {
            Hold::give_back(&mut self.workers.slots.lock().unwrap(), &self.receiver);
        }
    }
}

impl Workers {
    /// Starts the pump on the current tokio runtime.
    pub fn start(
        queue: Arc<dyn Queue>,
        sender: Sender,
        registry: Arc<Registry>,
        breaker: Breaker,
        metrics: Arc<Metrics>,
        activity: Arc<Activity>,
        keys_ms: u64,
    ) -> Arc<Workers> {
        let workers = Arc::new(Workers {
            queue,
            sender,
            policies: Policies {
                registry,
                known: Mutex::default(),
            },
            breaker,
            metrics,
            activity,
            slots: Mutex::default(),
            waiters: Mutex::default(),
            wake: Notify::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            progress: watch::channel(0).0,
            running: watch::channel(0).0,
            keys_ms,
        });
        tokio::spawn(workers.clone().pump());
        tokio::spawn(workers.clone().purge_old());
        workers
    }

    /// Deletes dead letters older than `delivery.dead_letter_days`, and
    /// the keys of events accepted longer ago than the window, at start and
    /// then hourly, so the state folder does not grow without bound.
    async fn purge_old(self: Arc<Self>) {
        let days = self.sender.config().dead_letter_days;
        let keep_ms = u64::from(days) * 86_400_000;
        let stop = self.stop.clone();
        stop.run_until_cancelled(async {
            loop {
                if days > 0 {
                    match self.queue.purge_dead(now_ms().saturating_sub(keep_ms)).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            "deleted {n} dead letters older than {days} days (delivery.dead_letter_days)"
                        ),
                        Err(e) => tracing::warn!("cannot delete old dead letters: {e}"),
                    }
                }
                let before = now_ms().saturating_sub(self.keys_ms);
                if let Err(e) = self.queue.forget_keys(before).await {
                    tracing::warn!("cannot forget old accepted events: {e}");
                }
                tokio::time::sleep(PURGE_EVERY).await;
            }
        })
        .await;
    }

    /// Stops claiming deliveries; attempts in flight finish and are recorded.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether [`Workers::stop`] was called: the engine is going away.
    pub fn stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Tells the pump that deliveries may be due (new ones were committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves once the queue holds nothing pending: every delivery sent or dead.
    pub async fn drained(&self) {
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

    /// Per receiver being sent to or failing: attempts in flight, and
    /// whether its circuit is open. For metrics.
    pub fn receivers(&self) -> Vec<ReceiverView> {
        let now = now_ms();
        let slots = self.slots.lock().unwrap();
        slots
            .receivers
            .iter()
            .map(|(name, r)| {
                let open = r.open_until.is_some_and(|until| until > now);
                ReceiverView {
                    name: name.clone(),
                    in_flight: r.in_flight,
                    open,
                    open_until: r.open_until.filter(|_| open),
                    failures: r.failures,
                    half_open: !open && r.failures >= self.breaker.failures,
                }
            })
            .collect()
    }

    async fn pump(self: Arc<Self>) {
        let stop = self.stop.clone();
        stop.run_until_cancelled(self.clone().pump_loop()).await;
    }

    async fn pump_loop(self: Arc<Self>) {
        loop {
            // Receivers whose pause ended send what they hold first.
            let resumes = self.launch_ready();
            let free = self.memory_room(&self.slots.lock().unwrap());
            let mut wait = resumes.map_or(POLL, |at| {
                Duration::from_millis(at.saturating_sub(now_ms())).min(POLL)
            });
            if free > 0 {
                let limit = free.min(CLAIM_BATCH);
                match self.queue.claim(now_ms(), limit, self.room()).await {
                    Ok(claim) => {
                        if claim.claimed.len() == limit {
                            wait = Duration::ZERO; // possibly more due right away
                        } else if let Some(at) = claim.next_due {
                            let due = Duration::from_millis(at.saturating_sub(now_ms()));
                            wait = wait.min(due);
                        }
                        for c in claim.claimed {
                            self.dispatch(c);
                        }
                    }
                    Err(e) => tracing::error!("cannot claim deliveries: {e}"),
                }
            }
            if wait.is_zero() {
                continue;
            }
            // A finishing attempt, new work or the next due time wakes us.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How many more deliveries each receiver may take now, and which are paused.
    fn room(&self) -> Room {
        let now = now_ms();
        let mut slots = self.slots.lock().unwrap();
        slots
            .receivers
            .retain(|_, r| r.in_flight > 0 || r.failures > 0 || r.held() > 0);
        let mut room = Room {
            default: READY_FACTOR * self.per_receiver(),
            ..Room::default()
        };
        for (name, r) in &slots.receivers {
            room.per_receiver
                .insert(name.clone(), self.claimable(r, now));
            if let Some(until) = r.open_until.filter(|&until| until > now) {
                room.paused.insert(name.clone(), until);
            }
        }
        room
    }

    /// How many more deliveries the engine may hold in memory: in flight
    /// plus claimed and waiting, at most twice `concurrency`.
    fn memory_room(&self, slots: &Slots) -> usize {
        let concurrency = self.sender.config().concurrency.max(1);
        (2 * concurrency).saturating_sub(slots.total + slots.ready)
    }

    fn per_receiver(&self) -> usize {
        self.sender.config().per_receiver_concurrency.max(1)
    }

    /// How many more `r` may have claimed: in flight plus held, up to
    /// [`READY_FACTOR`] times its slots; one at a time while half open.
    fn claimable(&self, r: &ReceiverState, now: u64) -> usize {
        let held = r.in_flight + r.held();
        match r.open_until {
            Some(until) if until > now => 0,
            _ if r.failures >= self.breaker.failures => usize::from(held == 0),
            _ => (READY_FACTOR * self.per_receiver()).saturating_sub(held),
        }
    }

    /// Sends a claimed delivery now if its receiver and the engine have a
    /// slot, else holds it in the receiver's ready queue.
    fn dispatch(self: &Arc<Self>, claimed: Claimed) {
        self.dispatch_with(claimed, |_| {});
    }

    /// [`Workers::dispatch`], first applying `update` to the slots under
    /// the same lock.
    fn dispatch_with(self: &Arc<Self>, claimed: Claimed, update: impl FnOnce(&mut Slots)) {
        let receiver = claimed.delivery.receiver();
        let mut slots = self.slots.lock().unwrap();
        update(&mut slots);
        let full = slots.total >= self.sender.config().concurrency.max(1);
        let r = slots.receivers.entry(receiver.clone()).or_default();
        if !full && self.room_of(r, now_ms()) > 0 {
            r.in_flight += 1;
            slots.total += 1;
            drop(slots);
            let slot = self.guard(receiver);
            self.launch(claimed, slot);
        } else {
            r.ready.push_back(claimed);
            slots.ready += 1;
        }
    }

    /// Launches held deliveries of every receiver with a free slot; returns
    /// when the next paused receiver holding some resumes.
    fn launch_ready(self: &Arc<Self>) -> Option<u64> {
        let now = now_ms();
        let concurrency = self.sender.config().concurrency.max(1);
        let mut go = Vec::new();
        let mut resumes: Option<u64> = None;
        {
            let mut slots = self.slots.lock().unwrap();
            let slots = &mut *slots;
            for (name, r) in slots.receivers.iter_mut() {
                while slots.total < concurrency && !r.ready.is_empty() && self.room_of(r, now) > 0 {
                    let next = r.ready.pop_front().expect("not empty");
                    r.in_flight += 1;
                    slots.total += 1;
                    slots.ready -= 1;
                    go.push((name.clone(), next));
                }
                if let Some(until) = r.open_until.filter(|&u| u > now && !r.ready.is_empty()) {
                    resumes = Some(resumes.map_or(until, |n| n.min(until)));
                }
            }
        }
        for (receiver, claimed) in go {
            let slot = self.guard(receiver);
            self.launch(claimed, slot);
        }
        resumes
    }

    fn room_of(&self, r: &ReceiverState, now: u64) -> usize {
        match r.open_until {
            Some(until) if until > now => 0,
            // Half open: one probe at a time until one succeeds.
            _ if r.failures >= self.breaker.failures => usize::from(r.in_flight == 0),
            _ => self.per_receiver().saturating_sub(r.in_flight),
        }
    }

    /// Takes a sending slot for `receiver` if it and the engine have room.
    fn try_slot(self: &Arc<Self>, receiver: String) -> Option<Slot> {
        let mut slots = self.slots.lock().unwrap();
        if slots.total >= self.sender.config().concurrency.max(1) {
            return None;
        }
        let r = slots.receivers.entry(receiver.clone()).or_default();
        if self.room_of(r, now_ms()) == 0 {
            return None;
        }
        r.in_flight += 1;
        slots.total += 1;
        drop(slots);
        Some(self.guard(receiver))
    }

    /// Reserves a place in `receiver`'s ready queue for a delivery about to
    /// be committed as claimed, so that it skips a trip through the queue's
    /// claim, if the receiver is up and has less than two rounds of its
    /// slots in flight or waiting (the third is left for the pump, so
    /// deliveries already waiting in the queue keep going out), and the
    /// engine holds less than twice `concurrency`. Only on a queue whose
    /// claims last until finished: on NATS, a delivery queued as claimed
    /// has a lease that is not renewed, so only one sent at once is.
    fn try_hold(self: &Arc<Self>, receiver: String) -> Option<Hold> {
        if !self.queue.claims_last() {
            return None;
        }
        let mut slots = self.slots.lock().unwrap();
        if self.memory_room(&slots) == 0 {
            return None;
        }
        let r = slots.receivers.entry(receiver.clone()).or_default();
        // More than a round of claim room left (none while open or half open).
        if self.claimable(r, now_ms()) <= self.per_receiver() {
            return None;
        }
        r.reserved += 1;
        slots.ready += 1;
        Some(Hold {
            workers: self.clone(),
            receiver,
            filled: false,
        })
    }

    fn guard(self: &Arc<Self>, receiver: String) -> Slot {
        Slot {
            workers: self.clone(),
            receiver,
            up: None,
        }
    }

    /// Gives a slot back (with `up`, updating the receiver's breaker too)
    /// and hands it to the receiver's next held delivery, if it may send.
    fn release_slot(self: &Arc<Self>, receiver: &str, up: Option<bool>) {
        let (next, refill) = {
            let mut slots = self.slots.lock().unwrap();
            let slots = &mut *slots;
            slots.total -= 1;
            let r = slots.receivers.entry(receiver.to_owned()).or_default();
            r.in_flight -= 1;
            if let Some(up) = up {
                self.breaker_update(receiver, r, up);
            }
            // Once stopping, held deliveries stay claimed for the next run.
            let next = if self.room_of(r, now_ms()) > 0 && !self.stop.is_cancelled() {
                r.ready.pop_front()
            } else {
                None
            };
            if next.is_some() {
                r.in_flight += 1;
                slots.total += 1;
                slots.ready -= 1;
            }
            // Claim more once it holds less than a round of its slots (so a
            // claim serves many deliveries), or if this slot went unused.
            (next, r.ready.len() < self.per_receiver())
        };
        if let Some(claimed) = next {
            let slot = self.guard(receiver.to_owned());
            self.launch(claimed, slot);
        }
        if refill {
            self.wake();
        }
    }

    /// Queues a batch durably and returns once it is committed. Those of
    /// its deliveries whose receiver has room go out at once, claimed in
    /// the same commit, without a trip through the pump; the rest wait for
    /// it. A caller that stops waiting changes nothing, and no slot or
    /// claimed row is left behind: the rest finishes in a task of its own.
    pub async fn submit(self: &Arc<Self>, batch: Batch) -> Result<Committed, QueueError> {
        let workers = self.clone();
        MustFinish::new(async move { workers.commit_and_launch(batch).await }).await
    }

    /// [`Workers::submit`] for a `wait` hook's deliveries: also returns, per
    /// delivery, a receiver of its first final outcome (delivered, or failed
    /// for good), however many attempts that takes.
    pub async fn submit_waiting(
        self: &Arc<Self>,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<(Delivery, oneshot::Receiver<WaitOutcome>)>, QueueError> {
        let mut waits = Vec::with_capacity(deliveries.len());
        {
            let mut waiters = self.waiters.lock().unwrap();
            for d in &deliveries {
                let (tx, rx) = oneshot::channel();
                waiters.entry(d.id.clone()).or_default().push(tx);
                waits.push((d.clone(), rx));
            }
        }
        let batch = Batch {
            queued: deliveries,
            ..Batch::default()
        };
        match self.submit(batch).await {
            Ok(_) => Ok(waits),
            Err(e) => {
                let mut waiters = self.waiters.lock().unwrap();
                for (d, _) in &waits {
                    waiters.remove(&d.id);
                }
                Err(e)
            }
        }
    }

    async fn commit_and_launch(self: Arc<Self>, mut batch: Batch) -> Result<Committed, QueueError> {
        // Those with a slot go out at once; those with a place in their
        // receiver's ready queue wait there: both are claimed in the commit.
        let (mut now, mut held) = (Vec::new(), Vec::new());
        for d in std::mem::take(&mut batch.queued) {
            let receiver = d.receiver();
            if let Some(slot) = self.try_slot(receiver.clone()) {
                now.push((d, slot));
            } else if let Some(hold) = self.try_hold(receiver) {
                held.push((d, hold));
            } else {
                batch.queued.push(d);
            }
        }
        batch.claimed = now
            .iter()
            .map(|(d, _)| d.clone())
            .chain(held.iter().map(|(d, _)| d.clone()))
            .collect();
        let has_queued = !batch.queued.is_empty();
        // On failure the slots and places drop with `now` and `held`.
        let written = self.queue.commit(batch).await?;
        if let Committed::Done { claimed } = &written
            && !self.stop.is_cancelled()
        {
            // Only the rows this commit wrote: an id queued before belongs
            // to whoever queued it (the slot of one not written drops here).
            let mine = |d: &Delivery| claimed.contains(&d.id);
            for (delivery, slot) in now.into_iter().filter(|(d, _)| mine(d)) {
                self.launch(Claimed::new(delivery), slot);
            }
            for (delivery, hold) in held.into_iter().filter(|(d, _)| mine(d)) {
                hold.fill(Claimed::new(delivery));
            }
            if has_queued {
                self.wake();
            }
        }
        Ok(written)
    }

    /// Sends a claimed delivery whose slot is taken.
    fn launch(self: &Arc<Self>, claimed: Claimed, slot: Slot) {
        let workers = self.clone();
        self.running.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            workers.attempt(claimed, slot).await;
            workers.running.send_modify(|n| *n -= 1);
            workers.progress.send_modify(|n| *n += 1);
        });
    }

    /// Resolves once no attempt is in flight (each launched one recorded).
    pub async fn idle(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }

    /// One attempt: send, give the slot back, record the result, tell a
    /// waiting caller.
    async fn attempt(&self, claimed: Claimed, mut slot: Slot) {
        let Claimed {
            delivery: d,
            attempts,
        } = claimed;
        let attempts = attempts + 1;
        let policy = self.policies.current(&d.hook);
        // A panic while attempting (a bug) fails this delivery alone.
        let sent = std::panic::AssertUnwindSafe(self.sender.attempt(&d, policy.as_deref()))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Attempt::Permanent {
                reason: "the engine failed while sending it (a bug in wasmhooks; please \
                         report it); retry this dead letter once fixed"
                    .into(),
                status: None,
            });
        let (finish, up) = match sent {
            Attempt::Delivered(status) => {
                tracing::debug!(hook = %d.hook, id = %d.id, url = %d.url, %status, attempts, "delivered");
                (Finish::Delivered, Some(true))
            }
            Attempt::Permanent { reason, status } => {
                tracing::error!(hook = %d.hook, id = %d.id, url = %d.url, "delivery failed for good, kept as a dead letter: {reason}");
                // An answer means the receiver is up; no answer (refused by
                // the guard, cannot be signed) says nothing about it.
                let up = status.is_some().then_some(true);
                let status = status.map(|s| s.as_u16());
                let error = reason;
                (Finish::Dead { error, status }, up)
            }
            Attempt::Retry {
                reason,
                status,
                retry_after,
            } => {
                let status = status.map(|s| s.as_u16());
                match retry_delay(self.sender.config(), attempts, retry_after) {
                    Some(delay) => {
                        tracing::info!(hook = %d.hook, id = %d.id, url = %d.url, attempts, "{reason}; retrying in {delay:?}");
                        let at_ms = now_ms() + delay.as_millis() as u64;
                        let error = reason;
                        (
                            Finish::Retry {
                                at_ms,
                                error,
                                status,
                            },
                            Some(false),
                        )
                    }
                    None => {
                        let error = gave_up(attempts, &reason);
                        tracing::error!(hook = %d.hook, id = %d.id, url = %d.url, "delivery kept as a dead letter: {error}");
                        (Finish::Dead { error, status }, Some(false))
                    }
                }
            }
        };
        slot.up = up;
        drop(slot);
        let counted = match &finish {
            Finish::Delivered => AttemptResult::Delivered,
            Finish::Retry { .. } => AttemptResult::Retry,
            Finish::Dead { .. } => AttemptResult::Dead,
        };
        let receiver = d.receiver();
        self.metrics.attempt(&receiver, counted);
        if let Finish::Retry { error, status, .. } | Finish::Dead { error, status } = &finish {
            self.activity.failure(
                &receiver,
                ReceiverFailure {
                    at_ms: now_ms(),
                    id: d.id.clone(),
                    hook: d.hook.to_string(),
                    status: *status,
                    error: error.clone(),
                    dead: matches!(finish, Finish::Dead { .. }),
                },
            );
        }
        let outcome = match &finish {
            Finish::Delivered => Some(Ok(())),
            Finish::Dead { error, .. } => Some(Err(error.clone())),
            Finish::Retry { .. } => None,
        };
        // The row stays claimed by this run until recorded: keep trying
        // (a full disk), or it would wait for the next start.
        let mut pause = FINISH_RETRY.0;
        while let Err(e) = self
            .queue
            .finish(d.id.clone(), attempts, finish.clone())
            .await
        {
            if matches!(e, QueueError::Closed) || self.stop.is_cancelled() {
                break; // the next run reclaims it and sends it again
            }
            tracing::error!(id = %d.id, "cannot record a delivery attempt ({e}); trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(FINISH_RETRY.1);
        }
        if let Some(outcome) = outcome {
            self.tell_waiters(&d.id, outcome);
        }
    }

    fn tell_waiters(&self, id: &str, outcome: WaitOutcome) {
        let waiting = self.waiters.lock().unwrap().remove(id);
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(outcome.clone());
        }
    }

    /// Forgets the waiters of deliveries whose caller stopped waiting.
    pub fn stop_waiting(&self, ids: impl IntoIterator<Item = String>) {
        let mut waiters = self.waiters.lock().unwrap();
        for id in ids {
            if let Some(list) = waiters.get_mut(&id) {
                list.retain(|tx| !tx.is_closed());
                if list.is_empty() {
                    waiters.remove(&id);
                }
            }
        }
    }

    /// Counts a success or failure; opens the circuit after too many failures.
    fn breaker_update(&self, name: &str, r: &mut ReceiverState, up: bool) {
        let now = now_ms();
        if up {
            if r.failures >= self.breaker.failures {
                tracing::info!(receiver = name, "receiver is back; resuming its deliveries");
            }
            r.failures = 0;
            r.open_until = None;
            r.cooldown_ms = 0;
            return;
        }
        r.failures += 1;
        if r.failures < self.breaker.failures || r.open_until.is_some_and(|u| u > now) {
            return;
        }
        r.cooldown_ms = if r.cooldown_ms == 0 {
            self.breaker.cooldown_ms
        } else {
            (r.cooldown_ms * 2).min(self.breaker.max_cooldown_ms)
        };
        r.open_until = Some(now + r.cooldown_ms);
        tracing::warn!(
            receiver = name,
            failures = r.failures,
            "receiver keeps failing; pausing its deliveries for {:?}",
            Duration::from_millis(r.cooldown_ms)
        );
    }
}
