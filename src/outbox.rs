//! The durable queue between hooks and receivers.
//!
//! It holds two things: the journal of accepted post events whose hooks
//! have not finished yet, and the deliveries waiting to be sent. Everything
//! the engine has acknowledged is in here, so a crash loses nothing: at
//! start, journaled events run again, and claimed deliveries are sent again
//! (at least once; receivers deduplicate on `webhook-id`).
//!
//! It sits behind the [`Outbox`] trait so that another backend (NATS
//! JetStream, for several engines) can come later. [`SqliteOutbox`] is the
//! one there is.

mod sqlite;

pub use sqlite::SqliteOutbox;

use crate::delivery::Delivery;
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::HashMap;

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The engine is shutting down.
    #[error("the outbox is closed: the engine is shutting down")]
    Closed,
    /// The state database could not be opened.
    #[error("cannot open the state database {path}: {reason}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// What went wrong, and what to do.
        reason: String,
    },
    /// The state database failed a read or a write.
    #[error("state database: {0}")]
    Store(String),
}

/// An accepted post event whose hooks have not all finished.
#[derive(Debug, Clone)]
pub struct Journaled {
    /// The journal's key for it.
    pub ticket: i64,
    /// Random, fixed at acceptance; delivery ids derive from it, so a re-run
    /// after a crash produces the same `webhook-id`s.
    pub uid: String,
    /// The hooks subscribed when it was accepted.
    pub hooks: Vec<String>,
    /// The event as accepted (already redacted).
    pub payload: String,
}

/// A delivery taken from the queue to be attempted.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery.
    pub delivery: Delivery,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// How an attempt ended, as recorded.
#[derive(Debug, Clone)]
pub enum Finish {
    /// The receiver took it: the delivery leaves the queue.
    Delivered,
    /// Try again at `at_ms` (Unix ms).
    Retry {
        /// When.
        at_ms: u64,
        /// Why this attempt failed.
        error: String,
        /// The receiver's status, if it answered.
        status: Option<u16>,
    },
    /// Failed for good: the delivery becomes a dead letter.
    Dead {
        /// Why.
        error: String,
        /// The receiver's status, if it answered.
        status: Option<u16>,
    },
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Waiting to be sent, retries included.
    #[default]
    Pending,
    /// Waiting, with at least one failed attempt.
    Failed,
    /// Dead letters: failed for good.
    Dead,
}

/// Which dead letters to send again.
#[derive(Debug, Clone)]
pub enum Retry {
    /// One delivery, by id.
    Id(String),
    /// Every dead letter.
    AllDead,
}

/// A queued delivery, as operators see it (no body).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    /// The `webhook-id`.
    pub id: String,
    /// The hook that asked for it.
    pub hook: String,
    /// The receiver's URL.
    pub url: String,
    /// `pending` or `dead`.
    pub state: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// When it was queued (Unix ms).
    pub created_ms: u64,
    /// When it is next tried (Unix ms); none for a dead letter.
    pub next_ms: Option<u64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The receiver's last status, if it answered.
    pub last_status: Option<u16>,
    /// Body size in bytes.
    pub body_bytes: usize,
}

impl DeliveryInfo {
    /// Time since it was queued.
    pub fn age(&self) -> std::time::Duration {
        let now = crate::delivery::now_ms();
        std::time::Duration::from_millis(now.saturating_sub(self.created_ms))
    }
}

/// What each receiver may take in one [`Outbox::claim`].
#[derive(Debug, Clone, Default)]
pub struct Room {
    /// Deliveries a receiver may take, by receiver (`host:port`).
    pub per_receiver: HashMap<String, usize>,
    /// For a receiver not in `per_receiver`.
    pub default: usize,
    /// Receivers whose circuit is open, with when it closes (Unix ms).
    pub paused: HashMap<String, u64>,
}

/// Queue depth per receiver, for metrics.
#[derive(Debug, Clone, Default)]
pub struct Depth {
    /// Pending deliveries.
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// When its oldest pending delivery was queued (Unix ms).
    pub oldest_ms: Option<u64>,
}

/// A durable queue of journaled events and deliveries. Every method that
/// writes returns once the write is committed.
pub trait Outbox: Send + Sync + 'static {
    /// Journals an accepted post event with the hooks that will run on it.
    fn journal(&self, uid: String, hooks: Vec<String>, payload: String) -> Fut<'_, i64>;
    /// Queues deliveries and, in the same transaction, retires the journaled
    /// event they came from. `claimed` ones are being sent by the caller
    /// already (as if [`Outbox::claim`]ed); `queued` ones wait to be claimed.
    /// A delivery id already queued is ignored.
    fn commit(
        &self,
        ticket: Option<i64>,
        claimed: Vec<Delivery>,
        queued: Vec<Delivery>,
    ) -> Fut<'_, ()>;
    /// Journaled events never retired: accepted before a crash.
    fn unfinished(&self) -> Fut<'_, Vec<Journaled>>;
    /// Takes up to `limit` deliveries due at `now_ms`, oldest first, each
    /// for a receiver with [`Room`] left. Due deliveries of a paused
    /// receiver are rescheduled to when it resumes instead. Claimed
    /// deliveries are not handed out again until finished (or the engine
    /// restarts).
    fn claim(&self, now_ms: u64, limit: usize, room: Room) -> Fut<'_, Vec<Claimed>>;
    /// Records how an attempt ended.
    fn finish(&self, id: String, attempts: u32, how: Finish) -> Fut<'_, ()>;
    /// When the next unclaimed pending delivery is due, if there is one.
    fn next_due(&self) -> Fut<'_, Option<u64>>;
    /// Pending deliveries, claimed or not, and journaled events.
    fn backlog(&self) -> Fut<'_, usize>;
    /// Deliveries matching `filter`, oldest first.
    fn list(&self, filter: Filter, limit: usize) -> Fut<'_, Vec<DeliveryInfo>>;
    /// Makes dead letters pending again, due now, with a fresh schedule.
    /// Returns how many.
    fn retry(&self, which: Retry) -> Fut<'_, usize>;
    /// Queue depth per receiver.
    fn depth(&self) -> Fut<'_, HashMap<String, Depth>>;
    /// Deletes dead letters queued at or before `before_ms` (Unix ms).
    /// Returns how many.
    fn purge_dead(&self, before_ms: u64) -> Fut<'_, usize>;
}

/// What [`Outbox`] methods return.
pub type Fut<'a, T> = BoxFuture<'a, Result<T, OutboxError>>;
