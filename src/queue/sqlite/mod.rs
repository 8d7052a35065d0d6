//! The queue in SQLite: one file in the state folder, in WAL mode, or a
//! database in memory.
//!
//! One thread owns the connection. Callers send it jobs; it runs every job
//! that is waiting in one transaction and commits once (group commit), so
//! the cost of a commit is shared by everything that arrived meanwhile.
//!
//! Here: the queue's handle and how jobs reach the thread; beside it,
//! `schema` (the file, its lock, upgrades), `writer` (the thread and its
//! group commit), `rows` (the statements and the rows they write),
//! `claim` (due deliveries within each receiver's room) and `queue` (the
//! [`Queue`] methods).

use super::{
    ArchiveBounds, Archived, AttemptRecord, Batch, Claim, Claimed, Committed, DeliveryDetail,
    DeliveryFilter, DeliveryInfo, DeliveryQuery, DeliveryState, Depth, Finish, Fut, History,
    Journaled, Queue, QueueError, Replay, Room,
};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

mod archive;
mod claim;
mod ids;
mod queue;
mod rows;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use schema::{DB_FILE, SCHEMA_VERSION, lock, migrate, open_connection, open_error, schema_version};
#[cfg(feature = "bench")]
pub(super) use writer::transactions;
use writer::{Job, run};

/// The SQLite queue. Cheap to share; the connection lives on its own thread.
pub(crate) struct SqliteQueue {
    jobs: mpsc::Sender<Job>,
    /// This engine run's id, written into the rows it claims.
    run: i64,
    /// What is kept of attempts and delivered deliveries.
    history: History,
    /// The receiver the last claim looked at last: the next one starts
    /// after it, so past [`CLAIM_RECEIVERS`] every receiver gets its turn.
    cursor: Arc<std::sync::Mutex<String>>,
    /// Bytes of archived records, once counted (see `archive.rs`).
    archived_bytes: Arc<std::sync::Mutex<Option<u64>>>,
    /// The database file (`None`: in memory), and a read-only connection
    /// to it for reading the archive beside the writer's (see `archive.rs`).
    path: Option<PathBuf>,
    reader: Arc<std::sync::Mutex<Option<Connection>>>,
    /// Held while the engine runs: one engine per state folder.
    _lock: Option<std::fs::File>,
}

impl SqliteQueue {
    /// Opens (or creates, or upgrades) `wasmhooks.db` in `dir` for an engine
    /// run, taking the folder's lock, or an in-memory database if `dir` is
    /// `None` (nothing survives a restart then). Holding the lock, it
    /// reclaims the rows that earlier runs claimed and never finished.
    ///
    /// With `fsync`, each commit waits for the disk (survives power loss);
    /// without it, commits survive a crash of the process but not of the machine.
    pub(crate) fn open(
        dir: Option<&Path>,
        fsync: bool,
        history: History,
    ) -> Result<Arc<SqliteQueue>, QueueError> {
        let lock = dir.map(lock).transpose()?;
        let path = dir.map(|d| d.join(DB_FILE));
        let conn = open_connection(path.as_deref(), fsync)?;
        migrate(&conn, path.as_deref())?;
        SqliteQueue::start(conn, lock, history, path)
    }

    /// Opens the state folder of an engine that may be running, for
    /// operator commands: no lock is taken, the schema is not changed and
    /// no claim is touched.
    pub(crate) fn inspect(dir: &Path) -> Result<Arc<SqliteQueue>, QueueError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(QueueError::Open {
                path,
                reason: "no such file; is --state the folder the engine uses?".into(),
                source: None,
            });
        }
        let conn = open_connection(Some(&path), true)?;
        let version = schema_version(&conn).map_err(|e| open_error(Some(&path), e))?;
        if version != SCHEMA_VERSION {
            return Err(QueueError::Open {
                path,
                reason: format!(
                    "it has schema version {version}, and this build reads {SCHEMA_VERSION}; \
                     start this build's engine on it once to upgrade it, or use the \
                     wasmhooks that wrote it"
                ),
                source: None,
            });
        }
        // It records no attempt, and shows every one kept.
        let history = History {
            attempts: usize::MAX,
            ..History::default()
        };
        SqliteQueue::start(conn, None, history, Some(path))
    }

    fn start(
        conn: Connection,
        lock: Option<std::fs::File>,
        history: History,
        path: Option<PathBuf>,
    ) -> Result<Arc<SqliteQueue>, QueueError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wasmhooks-queue".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| QueueError::Open {
                path: PathBuf::from(DB_FILE),
                reason: format!("cannot start the queue thread: {e}"),
                source: None,
            })?;
        Ok(Arc::new(SqliteQueue {
            jobs,
            run: fastrand::i64(1..),
            history,
            cursor: Arc::default(),
            archived_bytes: Arc::default(),
            path,
            reader: Arc::default(),
            _lock: lock,
        }))
    }

    /// Runs `f` in the next group transaction; resolves after the commit.
    /// A job of one write statement is atomic as it is (SQLite undoes a
    /// failed statement); one of several wraps them in [`atomically`].
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut writer::Store) -> rusqlite::Result<R> + Send + 'static,
    ) -> Fut<'_, R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            Box::new(move |commit_error: Option<&Arc<rusqlite::Error>>| {
                let result = match (result, commit_error) {
                    (Err(e), _) => Err(QueueError::from(e)),
                    (Ok(_), Some(e)) => Err(QueueError::Store(e.clone())),
                    (Ok(value), None) => Ok(value),
                };
                let _ = tx.send(result);
            })
        });
        let sent = self.jobs.send(job);
        Box::pin(async move {
            sent.map_err(|_| QueueError::Closed)?;
            rx.await.map_err(|_| QueueError::Closed)?
        })
    }
}
