//! Keeping accepted events on the engine's own disk while JetStream elects
//! a leader (`queue.nats.spill_after_ms`).
//!
//! JetStream elects a new leader 4 to 9 s after one is lost (nats-server's
//! Raft election timeout, which it does not let anyone set). A commit (an
//! event's deliveries, its key, the journal entry it retires) that has
//! waited `spill_after_ms` for it is written instead to `nats-spill.db` in
//! the state folder (SQLite, synced), and the caller is answered: the event
//! is accepted as durably as on the SQLite backend, on this engine's disk,
//! rather than on the cluster's. A task forwards what was kept to JetStream
//! once it answers again, under the same ids and key, so what was
//! half-written before the spill is stored once. An engine that stops with
//! events kept forwards them at its next start.
//!
//! A journal entry (a post event whose hooks are slower than
//! `post_inline_ms`) that waits as long is kept here too, with a negative
//! ticket; the JetStream write goes on, and if it lands, its entry is
//! removed, superseded. Such an event's key is not recorded: a copy of it
//! sent again later is not recognised (the window is an election's).
//!
//! Only an election is ridden out this way: once the oldest event kept
//! has waited `election_wait_ms`, JetStream is taken to be down, not
//! electing, and commits wait and fail as without a spill (503), so an
//! engine never becomes a queue of its own in front of a dead cluster.

use super::commit::journal_entry;
use super::*;
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};

/// The file, in the state folder.
pub(super) const SPILL_FILE: &str = "nats-spill.db";

/// How often the forwarder looks when nothing tells it to.
const FORWARD_EVERY: Duration = Duration::from_millis(500);

/// How many kept batches one forwarding pass reads at a time.
const FORWARD_PAGE: i64 = 64;

/// What a kept row is: a batch to forward, or a journal entry, retired
/// once its event's batch is committed or kept.
const BATCH: &str = "batch";
const JOURNAL: &str = "journal";

/// The spill of one engine run.
pub(super) struct Spill {
    path: PathBuf,
    db: Mutex<Connection>,
    /// How long a commit waits for JetStream before it is kept here.
    after: Duration,
    /// How long the oldest kept batch may wait before JetStream is taken
    /// to be down (`election_wait_ms`).
    limit: Duration,
    /// Since when something is kept here, if something is.
    since: Mutex<Option<Instant>>,
    /// Batches kept now, and ever.
    pending: std::sync::atomic::AtomicU64,
    kept: std::sync::atomic::AtomicU64,
    /// Wakes the forwarder.
    pub(super) wake: tokio::sync::Notify,
}

impl Spill {
    /// Opens (or creates) the spill in `dir`.
    pub(super) fn open(dir: &Path, after: Duration, limit: Duration) -> Result<Spill, QueueError> {
        let path = dir.join(SPILL_FILE);
        let failed = |reason: &str, e: rusqlite::Error| QueueError::Open {
            path: path.clone(),
            reason: reason.into(),
            source: Some(e),
        };
        std::fs::create_dir_all(dir).map_err(|e| QueueError::Open {
            path: path.clone(),
            reason: format!("cannot create the state folder for the NATS spill: {e}"),
            source: None,
        })?;
        let db = Connection::open(&path).map_err(|e| {
            failed(
                "cannot open the NATS spill (is the state folder writable?)",
                e,
            )
        })?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS spilled (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 kind TEXT NOT NULL,
                 ticket INTEGER,
                 key TEXT,
                 body BLOB NOT NULL
             );",
        )
        .map_err(|e| failed("cannot set up the NATS spill", e))?;
        let pending: i64 = db
            .query_row(
                "SELECT count(*) FROM spilled WHERE kind = ?1",
                [BATCH],
                |r| r.get(0),
            )
            .map_err(|e| failed("cannot read the NATS spill", e))?;
        if pending > 0 {
            tracing::info!(
                batches = pending,
                "events accepted while JetStream had no leader are still on this engine's disk ({}): forwarding them",
                path.display()
            );
        }
        Ok(Spill {
            path,
            db: Mutex::new(db),
            after,
            limit,
            since: Mutex::new((pending > 0).then(Instant::now)),
            pending: (pending as u64).into(),
            kept: 0.into(),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Whether a commit that has waited `after` may be kept here: yes
    /// unless what is kept already has waited `limit` (JetStream is down).
    fn open_to_more(&self) -> bool {
        self.since
            .lock()
            .unwrap()
            .is_none_or(|since| since.elapsed() < self.limit)
    }

    /// Batches kept now, and ever.
    pub(super) fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.pending.load(Relaxed), self.kept.load(Relaxed))
    }

    /// Keeps `batch` (its claimed deliveries as queued: nobody sends them
    /// until they are in JetStream), and retires local journal entry
    /// `local` in the same write.
    fn keep(&self, batch: &Batch, local: Option<i64>) -> Result<(), QueueError> {
        let now = now_ms();
        let mut body = Vec::new();
        for d in batch.claimed.iter().chain(&batch.queued) {
            let record = Record::of(d, now).encode(&d.body);
            body.extend_from_slice(&(record.len() as u32).to_be_bytes());
            body.extend_from_slice(&record);
        }
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO spilled (kind, ticket, key, body) VALUES (?1, ?2, ?3, ?4)",
            params![BATCH, batch.ticket, batch.key, body],
        )?;
        if let Some(local) = local {
            tx.execute("DELETE FROM spilled WHERE id = ?1", [-local])?;
        }
        tx.commit()?;
        // Counted before the forwarder, which reads under the same lock,
        // can see the row.
        self.kept_one();
        drop(db);
        Ok(())
    }

    /// Keeps a journal entry; its ticket is its row's id, negative.
    fn keep_journaled(&self, entry: &[u8]) -> Result<i64, QueueError> {
        let db = self.db.lock().unwrap();
        db.execute(
            "INSERT INTO spilled (kind, body) VALUES (?1, ?2)",
            params![JOURNAL, entry],
        )?;
        Ok(-db.last_insert_rowid())
    }

    /// Retires local journal entry `ticket`.
    fn retire(&self, ticket: i64) -> Result<(), QueueError> {
        let db = self.db.lock().unwrap();
        db.execute("DELETE FROM spilled WHERE id = ?1", [-ticket])?;
        Ok(())
    }

    /// The local journal entries, with their (negative) tickets.
    pub(super) fn journaled(&self) -> Result<Vec<(i64, Vec<u8>)>, QueueError> {
        let db = self.db.lock().unwrap();
        let mut select = db.prepare("SELECT id, body FROM spilled WHERE kind = ?1 ORDER BY id")?;
        let rows = select
            .query_map([JOURNAL], |r| Ok((-r.get::<_, i64>(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn kept_one(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut since = self.since.lock().unwrap();
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                "JetStream has had no leader for {:?}: accepted events are kept on this engine's \
                 disk ({}) until it has one, then forwarded (queue.nats.spill_after_ms)",
                self.after,
                self.path.display()
            );
        }
        self.pending.fetch_add(1, Relaxed);
        self.kept.fetch_add(1, Relaxed);
    }

    /// Up to [`FORWARD_PAGE`] kept batches, oldest first, after `after`.
    fn batches(&self, after: i64) -> Result<Vec<(i64, Batch)>, QueueError> {
        let db = self.db.lock().unwrap();
        let mut select = db.prepare(
            "SELECT id, ticket, key, body FROM spilled WHERE kind = ?1 AND id > ?2 ORDER BY id \
             LIMIT ?3",
        )?;
        type Row = (i64, Option<i64>, Option<String>, Vec<u8>);
        let rows: Vec<Row> = select
            .query_map(params![BATCH, after, FORWARD_PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(id, ticket, key, body)| {
                let mut queued = Vec::new();
                let body = Bytes::from(body);
                let mut at = 0;
                while let Some(len) = body.get(at..at + 4) {
                    let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
                    let record = body.slice(at + 4..(at + 4 + len).min(body.len()));
                    at += 4 + len;
                    match Record::decode(&record).and_then(|(r, b)| r.delivery(b)) {
                        Some(d) => queued.push(d),
                        None => tracing::error!(
                            row = id,
                            "a delivery kept in {} cannot be read back: dropped",
                            self.path.display()
                        ),
                    }
                }
                let batch = Batch {
                    ticket,
                    key,
                    queued,
                    ..Batch::default()
                };
                (id, batch)
            })
            .collect())
    }

    /// Forgets kept batch `id`, now in JetStream.
    fn forwarded(&self, id: i64) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering::Relaxed;
        let db = self.db.lock().unwrap();
        if db.execute("DELETE FROM spilled WHERE id = ?1", [id])? == 0 {
            return Ok(());
        }
        let left = self.pending.fetch_sub(1, Relaxed).saturating_sub(1);
        drop(db);
        if left == 0
            && let Some(since) = self.since.lock().unwrap().take()
        {
            tracing::info!(
                "JetStream has a leader again: every event kept on this engine's disk is \
                 forwarded, {:.1?} after the first",
                since.elapsed()
            );
        }
        Ok(())
    }
}

/// How a commit raced against the spill.
enum Raced<T> {
    Done(Result<T, QueueError>),
    /// It waited too long: keep it.
    Spill,
}

impl NatsQueue {
    /// Runs `write` (a commit); if it has not finished
    /// after `spill_after_ms` and the spill takes more, drops it (what it
    /// wrote is written again, once, when forwarded) for the spill.
    async fn race<T>(
        spill: &Spill,
        write: impl Future<Output = Result<T, QueueError>>,
    ) -> Raced<T> {
        if spill.after.is_zero() {
            return Raced::Done(write.await);
        }
        let mut write = std::pin::pin!(write);
        tokio::select! {
            done = &mut write => return Raced::Done(done),
            _ = tokio::time::sleep(spill.after) => {}
        }
        if spill.open_to_more() {
            return Raced::Spill;
        }
        Raced::Done(write.await)
    }

    /// [`NatsQueue::commit_batch`], kept in the spill if JetStream takes
    /// too long (see the module's doc). A batch kept is written but sends
    /// nothing now: none of it is claimed.
    pub(super) async fn commit_or_spill(&self, mut batch: Batch) -> Result<Committed, QueueError> {
        let Some(spill) = &self.spill else {
            return self.commit_batch(&batch).await;
        };
        // A ticket of the local journal: retired here, not in JetStream.
        let local = batch.ticket.filter(|t| *t < 0);
        if local.is_some() {
            batch.ticket = None;
        }
        match Self::race(spill, self.commit_batch(&batch)).await {
            Raced::Done(done) => {
                if let (Ok(_), Some(ticket)) = (&done, local)
                    && let Err(e) = blocking(spill, move |s| s.retire(ticket)).await
                {
                    // Run again at the next start: its deliveries are stored once.
                    tracing::warn!("cannot retire a journal entry kept on this engine's disk: {e}");
                }
                done
            }
            Raced::Spill => {
                blocking(spill, move |s| s.keep(&batch, local)).await?;
                spill.wake.notify_one();
                Ok(Committed::Done {
                    claimed: Vec::new(),
                })
            }
        }
    }

    /// [`NatsQueue::journal_event`], kept in the spill if JetStream takes
    /// too long: the ticket is then negative, and the JetStream write,
    /// which goes on, has its entry removed if it lands.
    pub(super) async fn journal_or_spill(
        &self,
        event: Journaled,
    ) -> Result<Option<i64>, QueueError> {
        let (Some(spill), Some(me)) = (&self.spill, self.me.upgrade()) else {
            return self.journal_event(event).await;
        };
        if spill.after.is_zero() {
            return self.journal_event(event).await;
        }
        let entry = journal_entry(&Journaled {
            key: None,
            ..event.clone()
        });
        let mut write = tokio::spawn(async move { me.journal_event(event).await });
        tokio::select! {
            done = &mut write => return done.map_err(|_| QueueError::Closed)?,
            _ = tokio::time::sleep(spill.after) => {}
        }
        if !spill.open_to_more() {
            return write.await.map_err(|_| QueueError::Closed)?;
        }
        let ticket = match blocking(spill, move |s| s.keep_journaled(&entry)).await {
            Ok(ticket) => ticket,
            Err(e) => {
                tracing::warn!(
                    "cannot keep a journal entry on this engine's disk ({e}): waiting for JetStream"
                );
                return write.await.map_err(|_| QueueError::Closed)?;
            }
        };
        let me = self.me.clone();
        tokio::spawn(async move {
            if let Ok(Ok(Some(seq))) = write.await
                && let Some(q) = me.upgrade()
                && let Err(e) = q
                    .ride_out("a superseded journal entry's removal", || {
                        delete(&q.streams.journal, seq as u64)
                    })
                    .await
            {
                tracing::warn!(
                    seq,
                    "cannot remove a journal entry kept on this engine's disk instead: {e}"
                );
            }
        });
        Ok(Some(ticket))
    }

    /// Forwards what `spill` keeps to JetStream, while the queue lives.
    pub(super) async fn forward(queue: std::sync::Weak<NatsQueue>, spill: Arc<Spill>) {
        let mut pause = Duration::from_millis(50);
        loop {
            let wait = {
                let Some(q) = queue.upgrade() else { return };
                match q.forward_pass(&spill).await {
                    Ok(()) => {
                        pause = Duration::from_millis(50);
                        FORWARD_EVERY
                    }
                    Err(e) => {
                        tracing::warn!(
                            "cannot forward the events kept on this engine's disk to JetStream \
                             yet ({e}); trying again in {pause:?}"
                        );
                        let wait = pause;
                        pause = (pause * 2).min(Duration::from_secs(5));
                        wait
                    }
                }
            };
            // A keep while a pass ran left a permit: not missed.
            tokio::select! {
                _ = spill.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass over what is kept: each batch committed (a key accepted
    /// meanwhile makes it a duplicate, written once), then forgotten.
    async fn forward_pass(&self, spill: &Arc<Spill>) -> Result<(), QueueError> {
        let mut after = 0;
        loop {
            let page = blocking(spill, move |s| s.batches(after)).await?;
            if page.is_empty() {
                return Ok(());
            }
            for (id, batch) in page {
                after = id;
                match self.commit_batch(&batch).await {
                    Ok(_) => blocking(spill, move |s| s.forwarded(id)).await?,
                    Err(e) if retry::transient(&e) => return Err(e),
                    // JetStream answers, and refuses this one: the others
                    // still go; it stays, and is tried at each pass.
                    Err(e) => tracing::error!(
                        row = id,
                        "JetStream refuses a batch of deliveries kept on this engine's disk \
                         ({}): {e}",
                        spill.path.display()
                    ),
                }
            }
        }
    }
}

/// Runs `f` on the spill off the async threads (SQLite syncs to disk). If
/// the caller goes away meanwhile, the write still happens.
async fn blocking<T: Send + 'static>(
    spill: &Arc<Spill>,
    f: impl FnOnce(&Spill) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let spill = spill.clone();
    tokio::task::spawn_blocking(move || f(&spill))
        .await
        .map_err(|_| QueueError::Closed)?
}
