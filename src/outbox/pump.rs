//! The pump: claims due deliveries as slots free up, launches held ones
//! when their receiver resumes, and purges what is past its retention.

use super::*;

impl Workers {
    /// Deletes dead letters older than `delivery.dead_letter_days`,
    /// deliveries delivered longer ago than `delivery.history_hours`, and
    /// the keys of events accepted longer ago than the window, at start and
    /// then hourly, so the state folder does not grow without bound.
    pub(super) async fn purge_old(self: Arc<Self>) {
        let days = self.sender.config().dead_letter_days;
        let keep_ms = u64::from(days) * 86_400_000;
        let hours = self.sender.config().history_hours;
        let history_ms = u64::from(hours) * 3_600_000;
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
                // With none kept, none to delete (and on a shared queue,
                // another engine's may be kept).
                if hours > 0 {
                    let before = now_ms().saturating_sub(history_ms);
                    match self.queue.purge_delivered(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            "deleted {n} deliveries delivered more than {hours} hours ago \
                             (delivery.history_hours)"
                        ),
                        Err(e) => tracing::warn!("cannot delete old delivered deliveries: {e}"),
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

    pub(super) async fn pump(self: Arc<Self>) {
        let stop = self.stop.clone();
        stop.run_until_cancelled(self.clone().pump_loop()).await;
    }

    pub(super) async fn pump_loop(self: Arc<Self>) {
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
                            self.send_or_hold(c);
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

    /// Sends a claimed delivery now if its receiver and the engine have a
    /// slot, else holds it in the receiver's ready queue.
    pub(super) fn send_or_hold(self: &Arc<Self>, claimed: Claimed) {
        self.send_or_hold_with(claimed, |_| {});
    }

    /// [`Workers::send_or_hold`], first applying `update` to the slots under
    /// the same lock.
    pub(super) fn send_or_hold_with(
        self: &Arc<Self>,
        claimed: Claimed,
        update: impl FnOnce(&mut Slots),
    ) {
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
    pub(super) fn launch_ready(self: &Arc<Self>) -> Option<u64> {
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
                if let Some(until) = r.circuit.open_until(now).filter(|_| !r.ready.is_empty()) {
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
}
