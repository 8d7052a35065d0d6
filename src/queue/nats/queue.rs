//! [`Queue`] on JetStream: each method is in the file of its job.

use super::*;

impl Queue for NatsQueue {
    /// A delivery queued as claimed is held under a lease that is not
    /// renewed: only one sent at once may be.
    fn claims_last(&self) -> bool {
        false
    }

    fn journal(&self, event: Journaled) -> Fut<'_, Option<i64>> {
        Box::pin(self.journal_or_spill(event))
    }

    fn commit(&self, batch: Batch) -> Fut<'_, Committed> {
        Box::pin(self.commit_or_spill(batch))
    }

    fn unfinished(&self) -> Fut<'_, Vec<Journaled>> {
        Box::pin(self.unfinished_events())
    }

    fn claim(&self, now_ms: u64, limit: usize, room: Room) -> Fut<'_, Claim> {
        Box::pin(self.claim_due(now_ms, limit, room))
    }

    fn finish(
        &self,
        id: String,
        attempts: u32,
        how: Finish,
        attempt: AttemptRecord,
    ) -> Fut<'_, ()> {
        Box::pin(self.finish_attempt(id, attempts, how, attempt))
    }

    fn archive(&self, records: Vec<Archived>, bounds: ArchiveBounds) -> Fut<'_, usize> {
        Box::pin(self.append_archive(records, bounds))
    }

    fn archived(&self, from_ms: u64, after: u64, limit: usize) -> Fut<'_, Vec<Archived>> {
        Box::pin(self.read_archive(from_ms, after, limit))
    }

    fn stalls(&self) -> Stalls {
        let (kept_now, kept) = self.spill.as_ref().map_or((0, 0), |s| s.counts());
        Stalls {
            waiting: self.stalled_for(),
            requests: self.stall.lock().unwrap().total,
            kept_now,
            kept,
        }
    }

    fn backlog(&self) -> Fut<'_, usize> {
        Box::pin(self.count_backlog())
    }

    fn list(&self, query: DeliveryQuery) -> Fut<'_, Vec<DeliveryInfo>> {
        Box::pin(self.list_deliveries(query))
    }

    fn get(&self, id: String) -> Fut<'_, Option<DeliveryDetail>> {
        Box::pin(self.get_delivery(id))
    }

    fn retry(&self, which: Replay, dry_run: bool) -> Fut<'_, usize> {
        Box::pin(self.replay(which, dry_run))
    }

    fn depth(&self) -> Fut<'_, HashMap<String, Depth>> {
        Box::pin(self.depth_by_receiver())
    }

    fn purge_dead(&self, before_ms: u64) -> Fut<'_, usize> {
        Box::pin(self.purge_dead_before(before_ms))
    }

    fn purge_delivered(&self, before_ms: u64) -> Fut<'_, usize> {
        Box::pin(self.purge_delivered_before(before_ms))
    }

    fn forget_keys(&self, before_ms: u64) -> Fut<'_, usize> {
        Box::pin(self.forget_keys_before(before_ms))
    }

    fn release(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            self.release_now().await;
            Ok(())
        })
    }
}
