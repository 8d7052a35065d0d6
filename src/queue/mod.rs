//! The durable queue between hooks and receivers.
//!
//! It holds three things: the journal of accepted post events whose hooks
//! have not finished yet, the deliveries waiting to be sent, and the keys of
//! recently accepted events (so an event sent twice is accepted once).
//! Everything the engine has acknowledged is in here, so a crash loses
//! nothing: at start, journaled events run again, and deliveries claimed by
//! the run that died are sent again (at least once; receivers deduplicate
//! on `webhook-id`).
//!
//! Backends implement [`Queue`]; the engine picks one from
//! [`QueueConfig`](crate::config::QueueConfig). [`SqliteQueue`] is the
//! embedded one (a file, or in memory); [`NatsQueue`] is on NATS JetStream,
//! shared by several engines. Every backend passes the same conformance
//! suite (`conformance.rs`). Operators reach a queue through
//! [`DeliveryAdmin`], which never touches claims.

#[cfg(feature = "bench")]
pub mod bench;
mod codec;
#[cfg(test)]
mod conformance;
mod nats;
mod sqlite;

pub(crate) use nats::NatsQueue;
pub(crate) use nats::connect as connect_nats;
pub(crate) use sqlite::SqliteQueue;

use crate::config::{ArchiveBounds, Config, History, QueueConfig, QueueSettings};
use crate::delivery::{AttemptOutcome, AttemptRecord, Delivery};
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The engine is shutting down.
    #[error("the queue is closed: the engine is shutting down")]
    Closed,
    /// The state database could not be opened.
    #[error("cannot open the state database {}: {reason}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong, and what to do.
        reason: String,
        /// The underlying error, if SQLite gave one.
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// The state database failed a read or a write (a full disk, an I/O
    /// error…). Nothing of that write was committed.
    #[error("state database: {0}")]
    Store(#[source] Arc<rusqlite::Error>),
    /// The NATS JetStream queue could not be reached or set up.
    #[error("cannot use NATS JetStream at {url}: {reason}")]
    Connect {
        /// The server URL(s) configured.
        url: String,
        /// What went wrong, and what to do.
        reason: String,
        /// The underlying error, if NATS gave one.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// What was asked cannot be done on this backend.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// NATS JetStream failed a request (the server is unreachable, a
    /// timeout…). What the request was to write may or may not have been
    /// written; trying it again writes it once.
    #[error("NATS JetStream: {0}")]
    Nats(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> QueueError {
        QueueError::Store(Arc::new(e))
    }
}

/// An accepted post event whose hooks have not all finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Journaled {
    /// The journal's key for it (0 before it is journaled).
    pub ticket: i64,
    /// Fixed at acceptance; delivery ids derive from it, so a re-run after
    /// a crash produces the same `webhook-id`s.
    pub uid: String,
    /// The event's key (method, call id, phase), recorded as accepted in
    /// the same write, if the engine recognises events sent twice.
    pub key: Option<String>,
    /// The hooks subscribed when it was accepted.
    pub hooks: Vec<String>,
    /// The event as accepted (already redacted).
    pub payload: String,
}

/// One write: deliveries to queue, the journaled event they came from, or
/// the key of the event they came from.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The journaled event to retire in the same write.
    pub ticket: Option<i64>,
    /// The event's key, recorded as accepted in the same write. If it was
    /// already accepted, nothing of the batch is written.
    pub key: Option<String>,
    /// Being sent by this engine run already (as if [`Queue::claim`]ed).
    pub claimed: Vec<Delivery>,
    /// Waiting to be claimed.
    pub queued: Vec<Delivery>,
}

/// Whether a write took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Committed {
    /// Written. `claimed`: the ids of the batch's claimed deliveries that
    /// were written (an id already queued is left as it was), which the
    /// caller, and only it, now sends.
    Done { claimed: Vec<String> },
    /// The batch's key was accepted before: nothing was written.
    Duplicate,
}

/// A delivery taken from the queue to be attempted.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    /// The delivery.
    pub delivery: Delivery,
    /// Attempts made before this one.
    pub attempts: u32,
}

impl Claimed {
    /// A delivery not attempted yet.
    pub(crate) fn new(delivery: Delivery) -> Claimed {
        Claimed {
            delivery,
            attempts: 0,
        }
    }
}

/// What one [`Queue::claim`] took.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    /// The deliveries, now claimed by this engine run.
    pub claimed: Vec<Claimed>,
    /// When the next delivery not taken is due (Unix ms), for a receiver
    /// that had room or is paused (as of when its pause ends); `None` if
    /// nothing else is waiting.
    pub next_due: Option<u64>,
}

/// How an attempt ended, as recorded. Why it failed, and what the
/// receiver answered, are in its [`AttemptRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The receiver took it: the delivery leaves the queue (kept as
    /// delivered for [`History::delivered`], if that is not zero).
    Delivered,
    /// Try again at `at_ms` (Unix ms).
    Retry {
        /// When.
        at_ms: u64,
    },
    /// Failed for good: the delivery becomes a dead letter.
    Dead,
}

impl Finish {
    /// As shown in the attempt's record.
    pub(crate) fn outcome(self) -> AttemptOutcome {
        match self {
            Finish::Delivered => AttemptOutcome::Delivered,
            Finish::Retry { .. } => AttemptOutcome::Retry,
            Finish::Dead => AttemptOutcome::Dead,
        }
    }
}

/// Where a delivery stands: what a listing asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting to be sent, retries included.
    #[default]
    Pending,
    /// Waiting, with at least one failed attempt.
    Failed,
    /// Dead letters: failed for good.
    Dead,
    /// Delivered, kept for `delivery.history_hours` after.
    Delivered,
}

/// Which deliveries to send again (replay): each keeps its `webhook-id`
/// and gets a fresh retry schedule, due now. Nothing in flight is taken:
/// a delivery claimed by an engine run is left to it. On NATS JetStream,
/// pending deliveries cannot be replayed (any engine may hold one):
/// [`QueueError::Unsupported`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// One delivery, by id: a dead letter, a delivered one (within
    /// `delivery.history_hours`), or (on SQLite) a pending one that failed.
    One(String),
    /// Every delivery [`DeliveryFilter`] matches.
    Matching(DeliveryFilter),
}

impl Replay {
    /// Every dead letter.
    pub fn all_dead() -> Replay {
        Replay::Matching(DeliveryFilter::new(DeliveryState::Dead))
    }
}

/// Which deliveries a listing shows, or a [`Replay::Matching`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Pending, failed (pending, failed at least once), dead or delivered.
    /// A replay of `Pending` takes the failed ones: a pending delivery
    /// never tried is due already.
    pub state: DeliveryState,
    /// Only the deliveries this hook asked for.
    pub hook: Option<String>,
    /// Only the deliveries to this receiver (`host:port`).
    pub receiver: Option<String>,
    /// Only those queued at or after this time (Unix ms).
    pub from_ms: Option<u64>,
    /// Only those queued before this time (Unix ms).
    pub to_ms: Option<u64>,
}

impl DeliveryFilter {
    /// Every delivery in `state`.
    pub fn new(state: DeliveryState) -> DeliveryFilter {
        DeliveryFilter {
            state,
            hook: None,
            receiver: None,
            from_ms: None,
            to_ms: None,
        }
    }

    /// Whether a delivery of `hook` to `receiver`, queued at `created_ms`,
    /// is one this filter takes, its state aside.
    fn wants(&self, hook: &str, receiver: &str, created_ms: u64) -> bool {
        self.hook.as_deref().is_none_or(|h| h == hook)
            && self.receiver.as_deref().is_none_or(|r| r == receiver)
            && self.from_ms.is_none_or(|from| created_ms >= from)
            && self.to_ms.is_none_or(|to| created_ms < to)
    }
}

/// Which deliveries to list ([`Engine::find_deliveries`](crate::Engine::find_deliveries)),
/// oldest first: one page of those [`DeliveryFilter`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Which ones.
    pub filter: DeliveryFilter,
    /// Only those after this delivery in the listing's order, given by its
    /// `created_ms` and `id`: the last row of the previous page.
    pub after: Option<(u64, String)>,
    /// At most this many.
    pub limit: usize,
}

impl DeliveryQuery {
    /// The first `limit` deliveries in `state`, of every hook and receiver.
    pub fn new(state: DeliveryState, limit: usize) -> DeliveryQuery {
        DeliveryQuery {
            filter: DeliveryFilter::new(state),
            after: None,
            limit,
        }
    }

    /// Whether `info` is one this query asks for, its state aside.
    fn wants(&self, info: &DeliveryInfo) -> bool {
        self.filter
            .wants(&info.hook, &info.receiver, info.created_ms)
            && self
                .after
                .as_ref()
                .is_none_or(|(ms, id)| (info.created_ms, info.id.as_str()) > (*ms, id.as_str()))
    }
}

/// A queued delivery, as operators see it (no body).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct DeliveryInfo {
    /// The `webhook-id`.
    pub id: String,
    /// The hook that asked for it.
    pub hook: String,
    /// The receiver's URL.
    pub url: String,
    /// The receiver: the URL's `host:port`.
    pub receiver: String,
    /// `pending`, `dead` or `delivered`.
    #[cfg_attr(feature = "server", schema(value_type = String, pattern = "^(pending|dead|delivered)$"))]
    pub state: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// When it was queued (Unix ms).
    pub created_ms: u64,
    /// When it is next tried (Unix ms); none for a dead letter or a
    /// delivered one.
    pub next_ms: Option<u64>,
    /// When it was delivered (Unix ms); none unless it was.
    pub delivered_ms: Option<u64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The receiver's last status, if it answered.
    pub last_status: Option<u16>,
    /// Body size in bytes.
    pub body_bytes: usize,
}

/// One delivery, as operators inspect it: its request headers (without
/// credentials) and its latest attempts.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct DeliveryDetail {
    /// Where it stands.
    pub delivery: DeliveryInfo,
    /// Its request headers as `[name, value]` pairs, the values of
    /// credentials (`Authorization`, `Cookie`, API keys, tokens…) replaced
    /// by `[redacted]`. `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` are added to each attempt.
    pub headers: Vec<(String, String)>,
    /// Its latest attempts (up to `delivery.history_attempts`), oldest
    /// first.
    pub history: Vec<AttemptRecord>,
}

impl DeliveryInfo {
    /// Time since it was queued.
    pub fn age(&self) -> std::time::Duration {
        let now = crate::util::now_ms();
        std::time::Duration::from_millis(now.saturating_sub(self.created_ms))
    }
}

/// What each receiver may take in one [`Queue::claim`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Room {
    /// Deliveries a receiver may take, by receiver (`host:port`).
    pub per_receiver: HashMap<String, usize>,
    /// For a receiver not in `per_receiver`.
    pub default: usize,
    /// Receivers whose circuit is open, with when it closes (Unix ms).
    pub paused: HashMap<String, u64>,
}

impl Room {
    /// How many `receiver` may take now.
    fn of(&self, receiver: &str) -> usize {
        if self.paused.contains_key(receiver) {
            return 0;
        }
        self.per_receiver
            .get(receiver)
            .copied()
            .unwrap_or(self.default)
    }
}

/// One archived event, as the queue keeps it: the record is the archive's
/// (JSON), opaque here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Archived {
    /// Its place in the archive, increasing (0 when writing).
    pub seq: u64,
    /// When it was archived (Unix ms).
    pub at_ms: u64,
    /// The record.
    pub record: Vec<u8>,
}

/// How long the queue's backend has kept requests waiting for it (NATS
/// JetStream electing a leader), for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Stalls {
    /// Since when requests wait now, if they do.
    pub waiting: Option<std::time::Duration>,
    /// Requests that waited, ever.
    pub requests: u64,
    /// Commits kept on the engine's disk until the backend takes them (see
    /// `queue.nats.spill_after_ms`): now, and ever.
    pub kept_now: u64,
    pub kept: u64,
}

/// Queue depth per receiver, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Depth {
    /// Pending deliveries.
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// When its oldest pending delivery was queued (Unix ms).
    pub oldest_ms: Option<u64>,
}

/// A durable queue of journaled events and deliveries, owned by one engine
/// run: what it claims is claimed by that run. Every method that writes
/// returns once the write is committed.
pub(crate) trait Queue: Send + Sync + 'static {
    /// Journals an accepted post event with the hooks that will run on it.
    /// Returns its ticket, or `None` if its key was accepted before (then
    /// nothing is written).
    fn journal(&self, event: Journaled) -> Fut<'_, Option<i64>>;
    /// Writes a [`Batch`] in one transaction. A delivery id already queued
    /// is ignored.
    fn commit(&self, batch: Batch) -> Fut<'_, Committed>;
    /// Journaled events never retired: accepted before a crash.
    fn unfinished(&self) -> Fut<'_, Vec<Journaled>>;
    /// Takes up to `limit` deliveries due at `now_ms`, oldest first per
    /// receiver, each for a receiver with [`Room`] left; a paused
    /// receiver's wait. Its cost does not grow with the backlog. Claimed
    /// deliveries are not handed out again until finished (or until the
    /// next engine run reclaims them).
    fn claim(&self, now_ms: u64, limit: usize, room: Room) -> Fut<'_, Claim>;
    /// Records how an attempt ended, for a delivery this run claimed (a
    /// row claimed by no one, or another run, is left alone), and keeps
    /// `record` in its history, with the latest [`History::attempts`].
    fn finish(&self, id: String, attempts: u32, how: Finish, record: AttemptRecord) -> Fut<'_, ()>;
    /// Pending deliveries, claimed or not, and journaled events.
    fn backlog(&self) -> Fut<'_, usize>;
    /// Deliveries matching `query`, oldest first.
    fn list(&self, query: DeliveryQuery) -> Fut<'_, Vec<DeliveryInfo>>;
    /// One delivery, pending, dead or delivered (within
    /// [`History::delivered`]), with its history; `None` if there is none
    /// with that id.
    fn get(&self, id: String) -> Fut<'_, Option<DeliveryDetail>>;
    /// Makes the deliveries `which` names pending again, due now, with a
    /// fresh schedule, under their ids; none that a run has claimed.
    /// Returns how many, or with `dry_run` how many it would, changing
    /// nothing.
    fn retry(&self, which: Replay, dry_run: bool) -> Fut<'_, usize>;
    /// Queue depth per receiver.
    fn depth(&self) -> Fut<'_, HashMap<String, Depth>>;
    /// Deletes dead letters queued at or before `before_ms` (Unix ms).
    /// Returns how many.
    fn purge_dead(&self, before_ms: u64) -> Fut<'_, usize>;
    /// Deletes the deliveries delivered at or before `before_ms` (Unix
    /// ms), with their history. Returns how many.
    fn purge_delivered(&self, before_ms: u64) -> Fut<'_, usize>;
    /// Forgets the keys of events accepted at or before `before_ms`: sent
    /// again after that, an event is accepted anew.
    fn forget_keys(&self, before_ms: u64) -> Fut<'_, usize>;
    /// Appends `records` to the archive, then drops its oldest records
    /// past `bounds`: older than `max_age`, or beyond `max_bytes` of
    /// records in all (with no records: only that). Returns how many of
    /// `records` were too large for the backend to keep (not kept).
    fn archive(&self, records: Vec<Archived>, bounds: ArchiveBounds) -> Fut<'_, usize>;
    /// Up to `limit` archived records after `after` (a `seq`; 0: from the
    /// start) archived at or after `from_ms`, oldest first; none if there
    /// is no archive.
    fn archived(&self, from_ms: u64, after: u64, limit: usize) -> Fut<'_, Vec<Archived>>;
    /// Whether a delivery committed as claimed ([`Batch::claimed`]) stays
    /// claimed by this run until it is finished, however long it waits for
    /// a slot. `false` where such a claim is a lease that ends on its own.
    fn claims_last(&self) -> bool {
        true
    }
    /// How long requests have waited for the backend (see [`Stalls`]).
    fn stalls(&self) -> Stalls {
        Stalls::default()
    }
    /// Hands back the deliveries this run holds (claimed, not finished), as
    /// the engine stops, so that other engines sharing the queue can take
    /// them at once. A backend that only one engine uses keeps them for its
    /// next run.
    fn release(&self) -> Fut<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// What [`Queue`] methods return.
pub(crate) type Fut<'a, T> = BoxFuture<'a, Result<T, QueueError>>;

/// Opens the queue `settings` names, for an engine run.
pub(crate) async fn open(settings: &QueueSettings) -> Result<Arc<dyn Queue>, QueueError> {
    let dir = match &settings.queue {
        QueueConfig::Sqlite => settings.state_dir.clone(),
        QueueConfig::Memory => None,
        QueueConfig::Nats(nats) => {
            let spill = settings.state_dir.as_deref();
            return Ok(NatsQueue::open(nats, settings, spill).await?);
        }
    };
    let fsync = settings.fsync;
    let history = settings.history;
    tokio::task::spawn_blocking(move || SqliteQueue::open(dir.as_deref(), fsync, history))
        .await
        .map_err(|_| QueueError::Closed)?
        .map(|q| q as Arc<dyn Queue>)
}

/// The queue `config` names (`queue` and `state_dir`), for operator
/// commands while engines may run on it: see [`SqliteQueue::inspect`].
pub(crate) async fn inspect(config: &Config) -> Result<Arc<dyn Queue>, QueueError> {
    let settings = config.queue_settings();
    match (&settings.queue, &settings.state_dir) {
        (QueueConfig::Nats(nats), _) => Ok(NatsQueue::open(nats, &settings, None).await?),
        (QueueConfig::Sqlite, Some(dir)) => Ok(SqliteQueue::inspect(dir)?),
        _ => Err(QueueError::Open {
            path: PathBuf::new(),
            reason: "a queue in memory cannot be inspected from outside the engine".into(),
            source: None,
        }),
    }
}

/// The queued deliveries, for operators (`wasmhooks deliveries`): list,
/// show, replay, and purge dead letters, also while engines run on the queue. It
/// never takes or resets a claim, so it never disturbs the deliveries in
/// flight.
pub struct DeliveryAdmin {
    queue: Arc<dyn Queue>,
}

impl DeliveryAdmin {
    /// Opens the SQLite queue in the state folder `dir`.
    pub fn open(dir: &Path) -> Result<DeliveryAdmin, QueueError> {
        Ok(DeliveryAdmin {
            queue: SqliteQueue::inspect(dir)?,
        })
    }

    /// Opens the queue `config` names (`queue` and `state_dir`).
    pub async fn connect(config: &Config) -> Result<DeliveryAdmin, QueueError> {
        Ok(DeliveryAdmin {
            queue: inspect(config).await?,
        })
    }

    /// Deliveries matching `query`, oldest first.
    pub async fn list(&self, query: DeliveryQuery) -> Result<Vec<DeliveryInfo>, QueueError> {
        self.queue.list(query).await
    }

    /// One delivery with its latest attempts; `None` if no delivery has
    /// that id (or it was delivered longer ago than `delivery.history_hours`).
    pub async fn get(&self, id: &str) -> Result<Option<DeliveryDetail>, QueueError> {
        self.queue.get(id.to_owned()).await
    }

    /// Makes the deliveries `which` names pending again, due now, under
    /// their ids; a running engine picks them up within a second. Returns
    /// how many.
    pub async fn retry(&self, which: Replay) -> Result<usize, QueueError> {
        self.queue.retry(which, false).await
    }

    /// How many deliveries [`retry`](DeliveryAdmin::retry) would make
    /// pending again now, changing nothing.
    pub async fn count_retry(&self, which: Replay) -> Result<usize, QueueError> {
        self.queue.retry(which, true).await
    }

    /// Deletes dead letters queued more than `older_than` ago. Returns how many.
    pub async fn purge_dead(&self, older_than: std::time::Duration) -> Result<usize, QueueError> {
        let before = crate::util::now_ms().saturating_sub(older_than.as_millis() as u64);
        self.queue.purge_dead(before).await
    }
}
