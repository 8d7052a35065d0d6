//! The queue in SQLite: one file in the state folder, in WAL mode, or a
//! database in memory.
//!
//! One thread owns the connection. Callers send it jobs; it runs every job
//! that is waiting in one transaction and commits once (group commit), so
//! the cost of a commit is shared by everything that arrived meanwhile.

use super::{
    Batch, Claim, Claimed, Committed, DeliveryInfo, DeliveryQuery, Depth, Filter, Finish, Fut,
    Journaled, Queue, QueueError, Retry, Room,
};
use crate::delivery::{Delivery, QueuedUnder};
use crate::util::now_ms;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The schema this build writes. Bump it, with a migration, on any change.
const SCHEMA_VERSION: i64 = 2;

/// Schema 2. `claimed` holds the id of the engine run that claimed a row
/// (0: not claimed); `allow` the hook's `allow_hosts` when it was queued.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    ticket      INTEGER PRIMARY KEY,
    uid         TEXT NOT NULL,
    hooks       TEXT NOT NULL,     -- JSON array of hook names
    payload     TEXT NOT NULL,     -- the event as accepted
    accepted_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id          TEXT PRIMARY KEY,  -- the webhook-id
    hook        TEXT NOT NULL,
    receiver    TEXT NOT NULL,     -- host:port
    url         TEXT NOT NULL,
    headers     TEXT NOT NULL,     -- JSON array of [name, value]
    body        BLOB NOT NULL,
    signed      INTEGER NOT NULL,  -- the hook had a secret: never send unsigned
    dead        INTEGER NOT NULL DEFAULT 0,
    claimed     INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_ms  INTEGER NOT NULL,
    next_ms     INTEGER NOT NULL,
    last_error  TEXT,
    last_status INTEGER,
    allow       TEXT               -- allow_hosts when queued; NULL: before schema 2
);
CREATE INDEX IF NOT EXISTS deliveries_ready ON deliveries (receiver, next_ms) WHERE dead = 0 AND claimed = 0;
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (created_ms) WHERE dead = 1;
CREATE TABLE IF NOT EXISTS accepted (
    key         TEXT PRIMARY KEY,  -- method, call id and phase of an accepted event
    at_ms       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS accepted_at ON accepted (at_ms);
";

/// From schema 1: the `allow` column, the per-receiver index, the keys.
const MIGRATE_1: &str = "
ALTER TABLE deliveries ADD COLUMN allow TEXT;
DROP INDEX IF EXISTS deliveries_due;
";

/// The database's file name in the state folder.
const DB_FILE: &str = "wasmhooks.db";

/// Takes the state folder's lock file, so two engines never share a queue.
fn lock(dir: &Path) -> Result<std::fs::File, QueueError> {
    let path = dir.join("wasmhooks.lock");
    let open_error = |reason: String| QueueError::Open {
        path: path.clone(),
        reason,
        source: None,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| open_error(format!("cannot create the folder: {e}")))?;
    let file = std::fs::File::create(&path).map_err(|e| open_error(e.to_string()))?;
    // A previous engine in this process may still be letting go of it.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(open_error(
                    "another wasmhooks engine is using this state folder; \
                     give each engine its own --state"
                        .into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(open_error(e.to_string())),
        }
    }
}

/// How long opening waits for the state folder's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Receivers looked at per claim at most: hooks choose URLs, so a claim's
/// cost stays bounded however many receivers have deliveries waiting.
const CLAIM_RECEIVERS: usize = 4096;

/// Jobs taken into one transaction at most.
const GROUP: usize = 4096;

/// After a transaction of at least [`BUSY`] jobs, the next one begins no
/// sooner than this after it began. Under load, commits (page writes and an
/// fsync each) are then shared by more jobs: 10–15 % less CPU per delivery
/// in `cargo bench --bench engine -- delivery-profile`, for at most this
/// much latency added, and only while busy.
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(1);

/// Jobs (writes or reads) in a transaction that show the queue is busy.
const BUSY: usize = 4;

type Reply = Box<dyn FnOnce(Option<&Arc<rusqlite::Error>>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// The SQLite queue. Cheap to share; the connection lives on its own thread.
pub(crate) struct SqliteQueue {
    jobs: mpsc::Sender<Job>,
    /// This engine run's id, written into the rows it claims.
    run: i64,
    /// The receiver the last claim looked at last: the next one starts
    /// after it, so past [`CLAIM_RECEIVERS`] every receiver gets its turn.
    cursor: Arc<std::sync::Mutex<String>>,
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
    pub fn open(dir: Option<&Path>, fsync: bool) -> Result<Arc<SqliteQueue>, QueueError> {
        let lock = dir.map(lock).transpose()?;
        let path = dir.map(|d| d.join(DB_FILE));
        let conn = open_connection(path.as_deref(), fsync)?;
        migrate(&conn, path.as_deref())?;
        SqliteQueue::start(conn, lock)
    }

    /// Opens the state folder of an engine that may be running, for
    /// operator commands: no lock is taken, the schema is not changed and
    /// no claim is touched.
    pub fn inspect(dir: &Path) -> Result<Arc<SqliteQueue>, QueueError> {
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
        SqliteQueue::start(conn, None)
    }

    fn start(
        conn: Connection,
        lock: Option<std::fs::File>,
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
            cursor: Arc::default(),
            _lock: lock,
        }))
    }

    /// Runs `f` in the next group transaction; resolves after the commit.
    /// A job of one write statement is atomic as it is (SQLite undoes a
    /// failed statement); one of several wraps them in [`atomically`].
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
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

fn open_error(path: Option<&Path>, e: rusqlite::Error) -> QueueError {
    QueueError::Open {
        path: path.map_or_else(|| PathBuf::from(":memory:"), Path::to_owned),
        reason: e.to_string(),
        source: Some(e),
    }
}

fn open_connection(path: Option<&Path>, fsync: bool) -> Result<Connection, QueueError> {
    let conn = match path {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| QueueError::Open {
                    path: path.to_owned(),
                    reason: format!("cannot create the state folder: {e}"),
                    source: None,
                })?;
            }
            Connection::open(path)
        }
        None => Connection::open_in_memory(),
    }
    .map_err(|e| open_error(path, e))?;
    let synchronous = if fsync { "FULL" } else { "NORMAL" };
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .and_then(|()| {
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};"
            ))
        })
        .map_err(|e| open_error(path, e))?;
    // Every statement here runs often: keep them all prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Creates or upgrades the schema, and reclaims every claim: the caller
/// holds the folder's lock, so the runs that claimed them are gone.
fn migrate(conn: &Connection, path: Option<&Path>) -> Result<(), QueueError> {
    let version = schema_version(conn).map_err(|e| QueueError::Open {
        path: path.map_or_else(|| PathBuf::from(":memory:"), Path::to_owned),
        reason: format!("{e}; is it a SQLite database?"),
        source: Some(e),
    })?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::Open {
            path: path.map_or_else(|| PathBuf::from(":memory:"), Path::to_owned),
            reason: format!(
                "it has schema version {version}, newer than this build's {SCHEMA_VERSION}; \
                 run a newer wasmhooks or point --state elsewhere"
            ),
            source: None,
        });
    }
    let upgrade = if version == 1 { MIGRATE_1 } else { "" };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {upgrade} {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};
         UPDATE deliveries SET claimed = 0 WHERE claimed != 0; COMMIT;"
    ))
    .map_err(|e| open_error(path, e))
}

/// The queue thread: takes every waiting job into one transaction.
fn run(conn: Connection, jobs: mpsc::Receiver<Job>) {
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
        if let Err(e) = exec(&conn, "BEGIN IMMEDIATE") {
            tracing::warn!("state database: cannot group writes ({e}); committing one by one");
            for job in waiting.drain(..) {
                // Outside a transaction, each statement commits (or fails) alone.
                job(&conn)(None);
            }
            continue;
        }
        let mut replies: Vec<Reply> = Vec::with_capacity(waiting.len());
        let mut rolled_back = None;
        while let Some(job) = waiting.pop_front() {
            replies.push(job(&conn));
            // After some errors (a full disk, an I/O error) SQLite rolls the
            // whole transaction back by itself: what the jobs before wrote
            // is gone, and the jobs after would run outside any transaction.
            // Those before fail; those after wait for the next transaction.
            if conn.is_autocommit() {
                rolled_back = Some(Arc::new(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("the transaction was rolled back by an error in it".into()),
                )));
                break;
            }
        }
        let commit_error = match rolled_back {
            Some(e) => Some(e),
            None => exec(&conn, "COMMIT").err().map(Arc::new),
        };
        if commit_error.is_some() && !conn.is_autocommit() {
            let _ = exec(&conn, "ROLLBACK");
        }
        for reply in replies {
            reply(commit_error.as_ref());
        }
    }
}

/// Runs `f` so that its writes are all or nothing, inside the group
/// transaction: for jobs of more than one write statement.
fn atomically<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
) -> rusqlite::Result<R> {
    exec(conn, "SAVEPOINT job")?;
    match f(conn) {
        Ok(value) => {
            exec(conn, "RELEASE job")?;
            Ok(value)
        }
        Err(e) => {
            let _ = exec(conn, "ROLLBACK TO job");
            let _ = exec(conn, "RELEASE job");
            Err(e)
        }
    }
}

/// Runs one statement from the statement cache: these run for every job,
/// so they are parsed once.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql(v: i64) -> u64 {
    v.max(0) as u64
}

/// The statements that run for every delivery. Each is prepared once and
/// must stay so: SQLite plans some statements again on every run when a
/// bound value could change the plan (an `=` on an indexed column with an
/// `ORDER BY`, a `LIMIT ?`, under `SQLITE_ENABLE_STAT4`), and planning costs
/// more than running them. Values that must not steer the plan are passed
/// as `(SELECT ?n)`. The `hot_statements_are_planned_once` test holds them
/// to it.
mod sql {
    pub const ACCEPT_KEY: &str =
        "INSERT INTO accepted (key, at_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING";
    pub const INSERT_DELIVERY: &str = "INSERT OR IGNORE INTO deliveries
           (id, hook, receiver, url, headers, body, signed, allow, claimed, created_ms, next_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)";
    pub const RETIRE_EVENT: &str = "DELETE FROM events WHERE ticket = ?1";
    /// The next receiver with unclaimed rows: one seek in `deliveries_ready`.
    pub const NEXT_RECEIVER: &str = "SELECT receiver FROM deliveries
         WHERE dead = 0 AND claimed = 0 AND receiver > ?1 ORDER BY receiver LIMIT 1";
    /// A receiver's unclaimed rows, soonest due first, in `deliveries_ready`'s order.
    pub const OLDEST_DUE: &str = "SELECT id, next_ms FROM deliveries
         WHERE dead = 0 AND claimed = 0 AND receiver = (SELECT ?1)
         ORDER BY next_ms LIMIT (SELECT ?2)";
    pub const TAKE: &str = "UPDATE deliveries SET claimed = ?2 WHERE id = ?1
         RETURNING hook, url, headers, body, attempts, signed, allow";
    pub const DELIVERED: &str = "DELETE FROM deliveries WHERE id = ?1 AND claimed = ?2";
    pub const RETRY: &str = "UPDATE deliveries SET claimed = 0, attempts = ?2, next_ms = ?3,
         last_error = ?4, last_status = ?5 WHERE id = ?1";
    pub const DEAD: &str = "UPDATE deliveries SET claimed = 0, dead = 1, attempts = ?2,
         last_error = ?3, last_status = ?4 WHERE id = ?1 AND claimed = ?5";
    /// Every statement above.
    #[cfg(test)]
    pub const ALL: [&str; 9] = [
        ACCEPT_KEY,
        INSERT_DELIVERY,
        RETIRE_EVENT,
        NEXT_RECEIVER,
        OLDEST_DUE,
        TAKE,
        DELIVERED,
        RETRY,
        DEAD,
    ];
}

/// Records `key` as accepted now; false if it already was.
fn accept_key(conn: &Connection, key: &str) -> rusqlite::Result<bool> {
    let inserted = conn
        .prepare_cached(sql::ACCEPT_KEY)?
        .execute(params![key, to_sql(now_ms())])?;
    Ok(inserted == 1)
}

/// Records how an attempt of `id` by `run` ended.
fn record(
    conn: &Connection,
    run: i64,
    id: &str,
    attempts: u32,
    how: Finish,
) -> rusqlite::Result<()> {
    match how {
        Finish::Delivered => conn
            .prepare_cached(sql::DELIVERED)?
            .execute(params![id, run]),
        Finish::Retry {
            at_ms,
            error,
            status,
        } => conn.prepare_cached(sql::RETRY)?.execute(params![
            id,
            attempts,
            to_sql(at_ms),
            error,
            status
        ]),
        Finish::Dead { error, status } => conn
            .prepare_cached(sql::DEAD)?
            .execute(params![id, attempts, error, status, run]),
    }
    .map(drop)
}

impl Queue for SqliteQueue {
    fn journal(&self, event: Journaled) -> Fut<'_, Option<i64>> {
        self.call(move |conn| {
            atomically(conn, |conn| {
                if let Some(key) = &event.key
                    && !accept_key(conn, key)?
                {
                    return Ok(None);
                }
                let hooks = serde_json::to_string(&event.hooks).expect("strings serialize");
                conn.prepare_cached(
                    "INSERT INTO events (uid, hooks, payload, accepted_ms) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    event.uid,
                    hooks,
                    event.payload,
                    to_sql(now_ms())
                ])?;
                Ok(Some(conn.last_insert_rowid()))
            })
        })
    }

    fn commit(&self, batch: Batch) -> Fut<'_, Committed> {
        let run = self.run;
        let writes = batch.claimed.len()
            + batch.queued.len()
            + usize::from(batch.ticket.is_some())
            + usize::from(batch.key.is_some());
        self.call(move |conn| {
            if writes > 1 {
                atomically(conn, |conn| write_batch(conn, run, &batch))
            } else {
                write_batch(conn, run, &batch)
            }
        })
    }

    fn unfinished(&self) -> Fut<'_, Vec<Journaled>> {
        self.call(|conn| {
            let mut stmt =
                conn.prepare("SELECT ticket, uid, hooks, payload FROM events ORDER BY ticket")?;
            let rows = stmt.query_map([], |r| {
                let hooks: String = r.get(2)?;
                Ok(Journaled {
                    ticket: r.get(0)?,
                    uid: r.get(1)?,
                    key: None,
                    hooks: serde_json::from_str(&hooks).unwrap_or_default(),
                    payload: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn claim(&self, now_ms: u64, limit: usize, room: Room) -> Fut<'_, Claim> {
        let (run, cursor) = (self.run, self.cursor.clone());
        self.call(move |conn| {
            let mut cursor = cursor.lock().unwrap();
            atomically(conn, |conn| {
                claim_due(conn, run, now_ms, limit, &room, &mut cursor)
            })
        })
    }

    fn finish(&self, id: String, attempts: u32, how: Finish) -> Fut<'_, ()> {
        let run = self.run;
        self.call(move |conn| record(conn, run, &id, attempts, how))
    }

    fn backlog(&self) -> Fut<'_, usize> {
        self.call(|conn| {
            conn.query_row(
                "SELECT (SELECT count(*) FROM deliveries WHERE dead = 0)
                      + (SELECT count(*) FROM events)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| from_sql(n) as usize)
        })
    }

    fn list(&self, query: DeliveryQuery) -> Fut<'_, Vec<DeliveryInfo>> {
        self.call(move |conn| {
            use rusqlite::types::Value;
            let mut sql = String::from(
                "SELECT id, hook, url, dead, attempts, created_ms, next_ms, last_error,
                        last_status, length(body), receiver
                 FROM deliveries WHERE ",
            );
            sql.push_str(match query.state {
                Filter::Pending => "dead = 0",
                Filter::Failed => "dead = 0 AND attempts > 0",
                Filter::Dead => "dead = 1",
            });
            let mut args: Vec<Value> = Vec::new();
            if let Some(hook) = query.hook {
                args.push(Value::Text(hook));
                sql.push_str(&format!(" AND hook = ?{}", args.len()));
            }
            if let Some(receiver) = query.receiver {
                args.push(Value::Text(receiver));
                sql.push_str(&format!(" AND receiver = ?{}", args.len()));
            }
            if let Some((ms, id)) = query.after {
                args.push(Value::Integer(to_sql(ms)));
                args.push(Value::Text(id));
                let n = args.len();
                sql.push_str(&format!(" AND (created_ms, id) > (?{}, ?{n})", n - 1));
            }
            args.push(Value::Integer(to_sql(query.limit as u64)));
            sql.push_str(&format!(" ORDER BY created_ms, id LIMIT ?{}", args.len()));
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                let dead: bool = r.get(3)?;
                Ok(DeliveryInfo {
                    id: r.get(0)?,
                    hook: r.get(1)?,
                    url: r.get(2)?,
                    receiver: r.get(10)?,
                    state: if dead { "dead" } else { "pending" },
                    attempts: r.get(4)?,
                    created_ms: from_sql(r.get(5)?),
                    next_ms: (!dead).then(|| r.get(6)).transpose()?.map(from_sql),
                    last_error: r.get(7)?,
                    last_status: r.get(8)?,
                    body_bytes: from_sql(r.get(9)?) as usize,
                })
            })?;
            rows.collect()
        })
    }

    fn retry(&self, which: Retry) -> Fut<'_, usize> {
        self.call(move |conn| {
            let now = to_sql(now_ms());
            // Dead letters are never claimed: this touches no claim.
            let set = "UPDATE deliveries SET dead = 0, attempts = 0, next_ms = ?1";
            match which {
                Retry::Id(id) => conn.execute(
                    &format!("{set} WHERE id = ?2 AND dead = 1"),
                    params![now, id],
                ),
                Retry::AllDead => conn.execute(&format!("{set} WHERE dead = 1"), [now]),
            }
        })
    }

    fn purge_dead(&self, before_ms: u64) -> Fut<'_, usize> {
        self.call(move |conn| {
            conn.prepare_cached("DELETE FROM deliveries WHERE dead = 1 AND created_ms <= ?1")?
                .execute([to_sql(before_ms)])
        })
    }

    fn forget_keys(&self, before_ms: u64) -> Fut<'_, usize> {
        self.call(move |conn| {
            conn.prepare_cached("DELETE FROM accepted WHERE at_ms <= ?1")?
                .execute([to_sql(before_ms)])
        })
    }

    fn depth(&self) -> Fut<'_, HashMap<String, Depth>> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT receiver, sum(dead = 0), sum(dead = 1), min(CASE WHEN dead = 0 THEN created_ms END)
                 FROM deliveries GROUP BY receiver",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Depth {
                        pending: from_sql(r.get(1)?),
                        dead: from_sql(r.get(2)?),
                        oldest_ms: r.get::<_, Option<i64>>(3)?.map(from_sql),
                    },
                ))
            })?;
            rows.collect()
        })
    }
}

/// Claims up to `limit` due deliveries, within each receiver's room. The
/// receivers with unclaimed rows are found by skipping through the
/// `deliveries_ready` index (one seek per receiver), and each one with room
/// is asked for its oldest due rows: the cost depends on the receivers
/// and the rows taken, never on how many wait.
fn claim_due(
    conn: &Connection,
    run: i64,
    now_ms: u64,
    limit: usize,
    room: &Room,
    cursor: &mut String,
) -> rusqlite::Result<Claim> {
    // The receivers after the cursor, then from the start up to it.
    let mut receivers = receivers_after(conn, cursor, CLAIM_RECEIVERS)?;
    if receivers.len() < CLAIM_RECEIVERS {
        let wrapped = receivers_after(conn, "", CLAIM_RECEIVERS - receivers.len())?;
        receivers.extend(
            wrapped
                .into_iter()
                .take_while(|r| r.as_str() <= cursor.as_str()),
        );
    }
    let mut next_due: Option<u64> = None;
    let mut due_soonest = |at: u64| next_due = Some(next_due.map_or(at, |n| n.min(at)));
    let mut picked = Vec::new();
    let mut oldest = conn.prepare_cached(sql::OLDEST_DUE)?;
    for receiver in &receivers {
        // The next claim starts after this one: when `limit` runs out
        // first, no receiver is always last.
        cursor.clone_from(receiver);
        if let Some(&until) = room.paused.get(receiver) {
            due_soonest(until);
            continue;
        }
        let take = room.of(receiver).min(limit - picked.len());
        if take == 0 {
            continue; // full: a finishing attempt wakes the pump
        }
        // One row more than it may take, to learn when its next one is due.
        let mut rows = oldest.query(params![receiver, (take + 1) as i64])?;
        let mut taken = 0;
        while let Some(row) = rows.next()? {
            let next_ms = from_sql(row.get(1)?);
            if next_ms > now_ms || taken == take {
                due_soonest(next_ms);
                break;
            }
            picked.push(row.get::<_, String>(0)?);
            taken += 1;
        }
        if picked.len() == limit {
            break;
        }
    }
    let mut claim = Claim {
        claimed: Vec::with_capacity(picked.len()),
        next_due,
    };
    let mut take = conn.prepare_cached(sql::TAKE)?;
    for id in picked {
        let row = take.query_row(params![id, run], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?;
        let (hook, url, headers, body, attempts, signed, allow) = row;
        let Ok(url) = reqwest::Url::parse(&url) else {
            // Only a hand-edited database gets here.
            conn.execute(
                "UPDATE deliveries SET dead = 1, claimed = 0, last_error = 'URL is not valid' WHERE id = ?1",
                [&id],
            )?;
            continue;
        };
        claim.claimed.push(Claimed {
            delivery: Delivery {
                id,
                hook: hook.into(),
                url,
                headers: headers_from_json(&headers),
                body: body.into(),
                queued: QueuedUnder {
                    signed,
                    allow: allow.map(Into::into),
                },
            },
            attempts,
        });
    }
    Ok(claim)
}

/// Up to `n` receivers with unclaimed rows, in order, after `after`:
/// one index seek each through `deliveries_ready`.
fn receivers_after(conn: &Connection, after: &str, n: usize) -> rusqlite::Result<Vec<String>> {
    let mut next = conn.prepare_cached(sql::NEXT_RECEIVER)?;
    let mut receivers: Vec<String> = Vec::new();
    while receivers.len() < n {
        let last = receivers.last().map_or(after, String::as_str);
        match next.query_row([last], |r| r.get(0)) {
            Ok(receiver) => receivers.push(receiver),
            Err(rusqlite::Error::QueryReturnedNoRows) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(receivers)
}

/// Writes a batch: its key, its deliveries (those `claimed` as claimed by
/// `run`), and retires its journaled event.
fn write_batch(conn: &Connection, run: i64, batch: &Batch) -> rusqlite::Result<Committed> {
    if let Some(key) = &batch.key
        && !accept_key(conn, key)?
    {
        return Ok(Committed::Duplicate);
    }
    let now = to_sql(now_ms());
    let mut insert = conn.prepare_cached(sql::INSERT_DELIVERY)?;
    let all = batch
        .claimed
        .iter()
        .map(|d| (d, run))
        .chain(batch.queued.iter().map(|d| (d, 0)));
    let mut written = Vec::new();
    for (d, claimed) in all {
        let inserted = insert.execute(params![
            d.id,
            &*d.hook,
            d.receiver(),
            d.url.as_str(),
            headers_to_json(&d.headers),
            &d.body[..],
            d.queued.signed,
            d.queued.allow.as_deref(),
            claimed,
            now
        ])?;
        if inserted == 1 && claimed != 0 {
            written.push(d.id.clone());
        }
    }
    if let Some(ticket) = batch.ticket {
        conn.prepare_cached(sql::RETIRE_EVENT)?.execute([ticket])?;
    }
    Ok(Committed::Done { claimed: written })
}

fn headers_to_json(headers: &HeaderMap) -> String {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    serde_json::to_string(&pairs).expect("strings serialize")
}

fn headers_from_json(text: &str) -> HeaderMap {
    let pairs: Vec<(String, String)> = serde_json::from_str(text).unwrap_or_default();
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            let _ = map.try_append(k, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery to one of two receivers.
    fn delivery(n: u32) -> Delivery {
        Delivery::new(
            format!("d{n}"),
            "hook".into(),
            &format!("http://r{}.test/path", n % 2),
            vec![("x-one".into(), "1".into())],
            b"{}".to_vec(),
            QueuedUnder {
                signed: false,
                allow: None,
            },
        )
        .unwrap()
    }

    /// Planning a statement costs more than running it: the ones that run
    /// for every delivery are planned once, whatever values they are given.
    #[test]
    fn hot_statements_are_planned_once() {
        let conn = open_connection(None, false).unwrap();
        migrate(&conn, None).unwrap();
        let (run, mut cursor) = (7, String::new());
        for round in 0..4u32 {
            let ticket = conn
                .execute(
                    "INSERT INTO events (uid, hooks, payload, accepted_ms) VALUES ('u', '[]', '{}', 0)",
                    [],
                )
                .map(|_| conn.last_insert_rowid())
                .unwrap();
            let batch = Batch {
                ticket: Some(ticket),
                key: Some(format!("key{round}")),
                claimed: vec![delivery(10 * round)],
                queued: (1..5).map(|i| delivery(10 * round + i)).collect(),
            };
            write_batch(&conn, run, &batch).unwrap();
            let room = Room {
                default: 1 + round as usize,
                ..Room::default()
            };
            let claim = claim_due(&conn, run, now_ms(), 8, &room, &mut cursor).unwrap();
            assert!(!claim.claimed.is_empty());
            let ends = [
                Finish::Delivered,
                Finish::Retry {
                    at_ms: now_ms() + u64::from(round),
                    error: format!("e{round}"),
                    status: Some(500 + round as u16),
                },
                Finish::Dead {
                    error: format!("e{round}"),
                    status: None,
                },
            ];
            let ids = std::iter::once(format!("d{}", 10 * round))
                .chain(claim.claimed.iter().map(|c| c.delivery.id.clone()));
            for (id, how) in ids.zip(ends.into_iter().cycle()) {
                record(&conn, run, &id, round + 1, how).unwrap();
            }
        }
        for sql in sql::ALL {
            let planned = conn
                .prepare_cached(sql)
                .unwrap()
                .get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(planned, 0, "planned again {planned} times: {sql}");
        }
    }
}
