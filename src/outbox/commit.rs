//! New deliveries: committed to the queue (already claimed when their
//! receiver has room in memory), then sent at once when there is a slot.

use super::*;

impl Workers {
    /// Queues a batch durably and returns once it is committed. Those of
    /// its deliveries whose receiver has room go out at once, claimed in
    /// the same commit, without a trip through the pump; the rest wait for
    /// it. A caller that stops waiting changes nothing, and no slot or
    /// claimed row is left behind: the rest finishes in a task of its own.
    pub(crate) async fn submit(self: &Arc<Self>, batch: Batch) -> Result<Committed, QueueError> {
        let workers = self.clone();
        let span = crate::trace::span(|| {
            tracing::info_span!(
                target: crate::trace::TARGET,
                "commit",
                wasmhooks.deliveries = batch.queued.len() as i64,
            )
        });
        let commit = async move { workers.commit_and_launch(batch).await };
        MustFinish::new(tracing::Instrument::instrument(commit, span)).await
    }

    /// [`Workers::submit`] for a `wait` hook's deliveries: also returns, per
    /// delivery, a receiver of its first final outcome (delivered, or failed
    /// for good), however many attempts that takes.
    pub(crate) async fn submit_waiting(
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

    pub(super) async fn commit_and_launch(
        self: Arc<Self>,
        mut batch: Batch,
    ) -> Result<Committed, QueueError> {
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
    pub(super) fn launch(self: &Arc<Self>, claimed: Claimed, slot: Slot) {
        let workers = self.clone();
        self.running.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            workers.attempt(claimed, slot).await;
            workers.running.send_modify(|n| *n -= 1);
            workers.progress.send_modify(|n| *n += 1);
        });
    }
}
