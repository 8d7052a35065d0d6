//! The thread that owns the connection: every waiting job in one
//! transaction, one commit (group commit).

use super::ids::Ids;
use rusqlite::Connection;
use std::sync::Arc;
use std::sync::mpsc;

/// Jobs taken into one transaction at most.
pub(super) const GROUP: usize = 4096;

/// After a transaction of at least [`BUSY`] jobs, the next one begins no
/// sooner than this after it began. Under load, commits (page writes and an
/// fsync each) are then shared by more jobs: 10–15 % less CPU per delivery
/// in `cargo bench --bench engine -- delivery-profile`, for at most this
/// much latency added, and only while busy.
pub(super) const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(1);

/// Jobs (writes or reads) in a transaction that show the queue is busy.
pub(super) const BUSY: usize = 4;

/// Transactions committed by every queue thread of the process: what a
/// commit (its page writes, its fsync) is shared by, in the benches.
static TRANSACTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Transactions committed so far, by every queue in the process.
#[cfg(feature = "bench")]
pub(crate) fn transactions() -> u64 {
    TRANSACTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

pub(super) type Reply = Box<dyn FnOnce(Option<&Arc<rusqlite::Error>>) + Send>;
pub(super) type Job = Box<dyn FnOnce(&mut Store) -> Reply + Send>;

/// What a job works on: the connection, and the ids of the rows in its
/// `deliveries` table.
pub(super) struct Store {
    pub(super) conn: Connection,
    pub(super) ids: Ids,
    /// SQLite's `data_version` when this connection last looked: it moves
    /// when another connection commits to the file.
    seen: Option<i64>,
}

impl std::ops::Deref for Store {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Store {
    pub(super) fn new(conn: Connection) -> Store {
        Store {
            conn,
            ids: Ids::new(),
            seen: None,
        }
    }

    /// At the start of a transaction: if another connection wrote since
    /// the last one, the ids are read again.
    fn catch_up(&mut self) {
        let version = self
            .conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut stmt| stmt.query_row([], |r| r.get::<_, i64>(0)))
            .ok();
        if version.is_none() || version != self.seen {
            self.ids.invalidate();
        }
        self.seen = version;
    }
}

/// The queue thread: takes every waiting job into one transaction.
pub(super) fn run(conn: Connection, jobs: mpsc::Receiver<Job>) {
    let mut store = Store::new(conn);
    let (mut transactions, mut grouped, mut since) = (0u64, 0u64, std::time::Instant::now());
    let mut waiting = std::collections::VecDeque::new();
    let (mut began, mut last_group) = (std::time::Instant::now(), 0);
    loop {
        if waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return, // every sender is gone
            }
        }
        // Busy: let more jobs arrive, so that one commit (its page writes,
        // its fsync) serves more of them. A lone caller's commits, of one
        // job each, never wait.
        if last_group >= BUSY
            && let Some(rest) = GROUP_WINDOW.checked_sub(began.elapsed())
        {
            std::thread::sleep(rest);
        }
        began = std::time::Instant::now();
        while waiting.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => break,
            }
        }
        transactions += 1;
        grouped += waiting.len() as u64;
        last_group = waiting.len();
        if since.elapsed() >= std::time::Duration::from_secs(5) {
            let per_second = transactions as f64 / since.elapsed().as_secs_f64();
            tracing::debug!(
                transactions_per_second = per_second as u64,
                jobs_per_transaction = grouped as f64 / transactions as f64,
                "queue group commits"
            );
            (transactions, grouped, since) = (0, 0, std::time::Instant::now());
        }
        if let Err(e) = exec(&store, "BEGIN IMMEDIATE") {
            tracing::warn!("state database: cannot group writes ({e}); committing one by one");
            // Read the ids again: nothing says what changed meanwhile.
            store.ids.invalidate();
            for job in waiting.drain(..) {
                // Outside a transaction, each statement commits (or fails) alone.
                job(&mut store)(None);
            }
            continue;
        }
        store.catch_up();
        let mut replies: Vec<Reply> = Vec::with_capacity(waiting.len());
        let mut rolled_back = None;
        while let Some(job) = waiting.pop_front() {
            replies.push(job(&mut store));
            // After some errors (a full disk, an I/O error) SQLite rolls the
            // whole transaction back by itself: what the jobs before wrote
            // is gone, and the jobs after would run outside any transaction.
            // Those before fail; those after wait for the next transaction.
            if store.is_autocommit() {
                rolled_back = Some(Arc::new(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("the transaction was rolled back by an error in it".into()),
                )));
                break;
            }
        }
        let commit_error = match rolled_back {
            Some(e) => Some(e),
            None => exec(&store, "COMMIT").err().map(Arc::new),
        };
        TRANSACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if commit_error.is_some() {
            if !store.is_autocommit() {
                let _ = exec(&store, "ROLLBACK");
            }
            // The jobs' rows are gone with the transaction; their ids too.
            store.ids.invalidate();
        }
        for reply in replies {
            reply(commit_error.as_ref());
        }
    }
}

/// Runs `f` so that its writes are all or nothing, inside the group
/// transaction: for jobs of more than one write statement.
pub(super) fn atomically<R>(
    store: &mut Store,
    f: impl FnOnce(&mut Store) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    exec(store, "SAVEPOINT job")?;
    match f(store) {
        Ok(value) => {
            exec(store, "RELEASE job")?;
            Ok(value)
        }
        Err(e) => {
            let _ = exec(store, "ROLLBACK TO job");
            let _ = exec(store, "RELEASE job");
            // What the job recorded of its rows is undone with them.
            store.ids.invalidate();
            Err(e)
        }
    }
}

/// Runs one statement from the statement cache: these run for every job,
/// so they are parsed once.
pub(super) fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}
