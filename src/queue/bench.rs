//! A door into the SQLite queue for `benches/` only (the `bench` feature,
//! which the package's dev-dependency on itself turns on): not API, and
//! hidden from the docs. The queue alone is measured through it, with the
//! same batches the engine writes, against SQLite's own floor for the same
//! rows (`cargo bench --bench engine -- queue`).

use super::{Batch, Finish, History, Queue, QueueError, Room, SqliteQueue};
use crate::delivery::{AttemptOutcome, AttemptRecord, Delivery, QueuedUnder};
use std::path::Path;
use std::sync::Arc;

/// The SQLite queue, as the engine opens it in a state folder.
pub struct BenchQueue(Arc<SqliteQueue>);

impl BenchQueue {
    /// Opens (creates) the queue in `dir`, keeping attempts and delivered
    /// deliveries as `[delivery]`'s defaults say if `history`, else none.
    pub fn open(dir: &Path, fsync: bool, history: bool) -> Result<BenchQueue, QueueError> {
        let history = if history {
            History::default()
        } else {
            History {
                attempts: 0,
                delivered: std::time::Duration::ZERO,
            }
        };
        SqliteQueue::open(Some(dir), fsync, history).map(BenchQueue)
    }

    /// Commits one accepted post event with its key and one delivery,
    /// as the engine does: `claimed` when its receiver has a free slot
    /// (the delivery goes out at once), queued otherwise.
    pub async fn commit(
        &self,
        key: String,
        id: String,
        url: &str,
        body: Vec<u8>,
        claimed: bool,
    ) -> Result<(), QueueError> {
        let delivery = Delivery::new(
            id,
            "forward".into(),
            url,
            Vec::new(),
            body,
            QueuedUnder::default(),
        )
        .expect("the bench gives an http URL");
        let (claimed, queued) = if claimed {
            (vec![delivery], Vec::new())
        } else {
            (Vec::new(), vec![delivery])
        };
        let batch = Batch {
            key: Some(key),
            claimed,
            queued,
            ..Batch::default()
        };
        self.0.commit(batch).await.map(drop)
    }

    /// Claims up to `limit` due deliveries, any receiver; their ids.
    pub async fn claim(&self, limit: usize) -> Result<Vec<String>, QueueError> {
        let room = Room {
            default: limit,
            ..Room::default()
        };
        let claim = self.0.claim(crate::util::now_ms(), limit, room).await?;
        Ok(claim.claimed.into_iter().map(|c| c.delivery.id).collect())
    }

    /// Records a delivery this run claimed as delivered, with a receiver's
    /// usual answer (`200`, a JSON body of a few bytes): it leaves the
    /// queue, or is kept as delivered.
    pub async fn delivered(&self, id: String) -> Result<(), QueueError> {
        let record = AttemptRecord {
            at_ms: crate::util::now_ms(),
            duration_ms: 1,
            outcome: AttemptOutcome::Delivered,
            status: Some(200),
            error: None,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Some("{\"ok\":true}".into()),
            body_truncated: false,
            engine: "bench/1".into(),
        };
        self.0.finish(id, 1, Finish::Delivered, record).await
    }

    /// Transactions committed by every SQLite queue in this process so far.
    pub fn transactions() -> u64 {
        super::sqlite::transactions()
    }
}
