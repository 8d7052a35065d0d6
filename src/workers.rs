//! Delivery workers: claim due deliveries from the outbox, send them, record
//! how each attempt ended. A circuit breaker pauses a receiver that keeps
//! failing and probes it with one delivery once the pause is over.

use crate::delivery::{Attempt, Delivery, Sender, gave_up, now_ms};
use crate::metrics::{AttemptResult, Metrics};
use crate::outbox::{Claimed, Finish, Outbox, OutboxError, Room};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Longest the pump sleeps without looking at the outbox, so that changes
/// from outside (`wasmhooks deliveries retry` in another process) are seen.
const POLL: Duration = Duration::from_secs(1);

/// Most deliveries claimed in one go.
const CLAIM_BATCH: usize = 512;

/// How often dead letters past `delivery.dead_letter_days` are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// What the workers know about one receiver.
#[derive(Debug, Default)]
struct ReceiverState {
    in_flight: usize,
    /// Failed attempts in a row (retryable failures only: a 4xx means it is up).
    failures: u32,
    /// While set and in the future, its circuit is open: nothing is sent.
    open_until: Option<u64>,
    /// The current pause; doubles each time a probe fails.
    cooldown_ms: u64,
}

/// Deliveries being sent, in all and per receiver, under one lock.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
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

pub(crate) struct Workers {
    outbox: Arc<dyn Outbox>,
    sender: Arc<Sender>,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    slots: Mutex<Slots>,
    wake: Notify,
    /// Stops the pump when the engine is dropped.
    stop: tokio_util::sync::CancellationToken,
    /// Bumped whenever an attempt finishes, for [`Workers::drained`].
    progress: watch::Sender<u64>,
}

impl Workers {
    /// Starts the pump on the current tokio runtime.
    pub fn start(
        outbox: Arc<dyn Outbox>,
        sender: Arc<Sender>,
        breaker: Breaker,
        metrics: Arc<Metrics>,
    ) -> Arc<Workers> {
        let workers = Arc::new(Workers {
            outbox,
            sender,
            breaker,
            metrics,
            slots: Mutex::default(),
            wake: Notify::new(),
            stop: tokio_util::sync::CancellationToken::new(),
            progress: watch::channel(0).0,
        });
        tokio::spawn(workers.clone().pump());
        tokio::spawn(workers.clone().purge_old_dead_letters());
        workers
    }

    /// Deletes dead letters older than `delivery.dead_letter_days`, at start
    /// and then hourly, so the state folder does not grow without bound.
    async fn purge_old_dead_letters(self: Arc<Self>) {
        let days = self.sender.config().dead_letter_days;
        if days == 0 {
            return;
        }
        let keep_ms = u64::from(days) * 86_400_000;
        let stop = self.stop.clone();
        stop.run_until_cancelled(async {
            loop {
                match self.outbox.purge_dead(now_ms().saturating_sub(keep_ms)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        "deleted {n} dead letters older than {days} days (delivery.dead_letter_days)"
                    ),
                    Err(e) => tracing::warn!("cannot delete old dead letters: {e}"),
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

    /// Tells the pump that deliveries may be due (new ones were committed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves once the outbox holds nothing pending: every delivery sent or dead.
    pub async fn drained(&self) {
        let mut progress = self.progress.subscribe();
        loop {
            match self.outbox.backlog().await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("cannot read the outbox: {e}");
                    return;
                }
            }
            let _ = tokio::time::timeout(POLL, progress.changed()).await;
        }
    }

    async fn pump(self: Arc<Self>) {
        let stop = self.stop.clone();
        stop.run_until_cancelled(self.clone().pump_loop()).await;
    }

    async fn pump_loop(self: Arc<Self>) {
        let concurrency = self.sender.config().concurrency.max(1);
        loop {
            let free = concurrency.saturating_sub(self.slots.lock().unwrap().total);
            let mut claimed_any = false;
            if free > 0 {
                let limit = free.min(CLAIM_BATCH);
                match self.outbox.claim(now_ms(), limit, self.room()).await {
                    Ok(claimed) => {
                        if claimed.len() == limit {
                            // Possibly more due right away.
                            self.wake.notify_one();
                        }
                        claimed_any = !claimed.is_empty();
                        for c in claimed {
                            self.take_slot(&c.delivery.receiver());
                            self.clone().launch(c);
                        }
                    }
                    Err(e) => tracing::error!("cannot claim deliveries: {e}"),
                }
            }
            if free == 0 || claimed_any {
                // Busy: the next slot to free up wakes us (or new work does).
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let wait = match self.outbox.next_due().await {
                // Due now, yet nothing was claimable: every due delivery's
                // receiver is busy. A finishing attempt wakes us.
                Ok(Some(at)) if at <= now_ms() => POLL,
                Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now_ms())).min(POLL),
                _ => POLL,
            };
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
            .retain(|_, r| r.in_flight > 0 || r.failures > 0);
        let mut room = Room {
            default: self.per_receiver(),
            ..Room::default()
        };
        for (name, r) in &slots.receivers {
            room.per_receiver.insert(name.clone(), self.room_of(r, now));
            if let Some(until) = r.open_until.filter(|&until| until > now) {
                room.paused.insert(name.clone(), until);
            }
        }
        room
    }

    fn per_receiver(&self) -> usize {
        self.sender.config().per_receiver_concurrency.max(1)
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
    fn try_take_slot(&self, receiver: &str) -> bool {
        let mut slots = self.slots.lock().unwrap();
        if slots.total >= self.sender.config().concurrency.max(1) {
            return false;
        }
        let r = slots.receivers.entry(receiver.to_owned()).or_default();
        if self.room_of(r, now_ms()) == 0 {
            return false;
        }
        r.in_flight += 1;
        slots.total += 1;
        true
    }

    /// Takes a slot the outbox already checked there was room for.
    fn take_slot(&self, receiver: &str) {
        let mut slots = self.slots.lock().unwrap();
        slots.total += 1;
        slots
            .receivers
            .entry(receiver.to_owned())
            .or_default()
            .in_flight += 1;
    }

    /// Gives a slot back; with `up`, updates the receiver's breaker too.
    fn release_slot(&self, receiver: &str, up: Option<bool>) {
        {
            let mut slots = self.slots.lock().unwrap();
            slots.total -= 1;
            let r = slots.receivers.entry(receiver.to_owned()).or_default();
            r.in_flight -= 1;
            if let Some(up) = up {
                self.breaker_update(receiver, r, up);
            }
        }
        // The pump claims more, or holds back a paused receiver's deliveries.
        self.wake();
    }

    /// Queues deliveries durably (and retires the journaled event they came
    /// from). Those whose receiver has room go out at once, claimed in the
    /// same commit, without a trip through the pump; the rest wait for it.
    pub async fn submit(
        self: &Arc<Self>,
        ticket: Option<i64>,
        deliveries: Vec<Delivery>,
    ) -> Result<(), OutboxError> {
        let (now, later): (Vec<Delivery>, Vec<Delivery>) = deliveries
            .into_iter()
            .partition(|d| self.try_take_slot(&d.receiver()));
        let has_later = !later.is_empty();
        match self.outbox.commit(ticket, now.clone(), later).await {
            Ok(()) => {
                for delivery in now {
                    self.clone().launch(Claimed {
                        delivery,
                        attempts: 0,
                    });
                }
                if has_later {
                    self.wake();
                }
                Ok(())
            }
            Err(e) => {
                for d in &now {
                    self.release_slot(&d.receiver(), None);
                }
                Err(e)
            }
        }
    }

    /// Sends a claimed delivery whose slot is taken.
    fn launch(self: Arc<Self>, claimed: Claimed) {
        tokio::spawn(async move {
            self.attempt(claimed).await;
            self.progress.send_modify(|n| *n += 1);
        });
    }

    /// One attempt: send, give the slot back, record the result.
    async fn attempt(&self, claimed: Claimed) {
        let Claimed {
            delivery: d,
            attempts,
        } = claimed;
        let attempts = attempts + 1;
        let (finish, up) = match self.sender.attempt(&d).await {
            Attempt::Delivered(status) => {
                tracing::debug!(hook = %d.hook, id = %d.id, url = %d.url, %status, attempts, "delivered");
                (Finish::Delivered, true)
            }
            Attempt::Permanent { reason, status } => {
                tracing::error!(hook = %d.hook, id = %d.id, url = %d.url, "delivery failed for good, kept as a dead letter: {reason}");
                let status = status.map(|s| s.as_u16());
                (
                    Finish::Dead {
                        error: reason,
                        status,
                    },
                    true,
                )
            }
            Attempt::Retry {
                reason,
                status,
                retry_after,
            } => {
                let status = status.map(|s| s.as_u16());
                match self.sender.retry_delay(attempts, retry_after) {
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
                            false,
                        )
                    }
                    None => {
                        let error = gave_up(attempts, &reason);
                        tracing::error!(hook = %d.hook, id = %d.id, url = %d.url, "delivery kept as a dead letter: {error}");
                        (Finish::Dead { error, status }, false)
                    }
                }
            }
        };
        self.release_slot(&d.receiver(), Some(up));
        let counted = match &finish {
            Finish::Delivered => AttemptResult::Delivered,
            Finish::Retry { .. } => AttemptResult::Retry,
            Finish::Dead { .. } => AttemptResult::Dead,
        };
        self.metrics.attempt(&d.receiver(), counted);
        if let Err(e) = self.outbox.finish(d.id.clone(), attempts, finish).await {
            tracing::error!(id = %d.id, "cannot record a delivery attempt ({e}); it will be sent again");
        }
    }

    /// Counts a success or failure; opens the circuit after too many failures.
    fn breaker_update(&self, name: &str, r: &mut ReceiverState, up: bool) {
        let now = now_ms();
        if up {
            if r.failures >= self.breaker.failures {
                tracing::info!(receiver = name, "receiver is back; resuming its deliveries");
            }
            *r = ReceiverState {
                in_flight: r.in_flight,
                ..ReceiverState::default()
            };
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
