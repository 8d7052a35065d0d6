//! The outbox in SQLite: one file in the state folder, in WAL mode.
//!
//! One thread owns the connection. Callers send it jobs; it runs every job
//! that is waiting in one transaction and commits once (group commit), so
//! the cost of a commit is shared by everything that arrived meanwhile.

use super::{
    Claimed, DeliveryInfo, Depth, Filter, Finish, Fut, Journaled, Outbox, OutboxError, Retry, Room,
};
use crate::delivery::{Delivery, now_ms};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The schema this build writes. Bump it, with a migration, on any change.
const SCHEMA_VERSION: i64 = 1;

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
    last_status INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_ms) WHERE dead = 0 AND claimed = 0;
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (created_ms) WHERE dead = 1;
";

/// The database's file name in the state folder.
const DB_FILE: &str = "wasmhooks.db";

/// Takes the state folder's lock file, so two engines never share a queue.
fn lock(dir: &Path) -> Result<std::fs::File, OutboxError> {
    let path = dir.join("wasmhooks.lock");
    let open_error = |reason: String| OutboxError::Open {
        path: path.clone(),
        reason,
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

/// Rows looked at per claim at most, so a receiver with a huge backlog of
/// due deliveries (and no room) costs a bounded scan.
const CLAIM_SCAN: usize = 20_000;

/// Jobs taken into one transaction at most.
const GROUP: usize = 4096;

type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// The SQLite outbox. Cheap to share; the connection lives on its own thread.
pub struct SqliteOutbox {
    jobs: mpsc::Sender<Job>,
    /// Held while the engine runs: one engine per state folder.
    _lock: Option<std::fs::File>,
}

impl SqliteOutbox {
    /// Opens (or creates) `wasmhooks.db` in `dir`, or an in-memory database
    /// if `dir` is `None` (nothing survives a restart then).
    ///
    /// With `fsync`, each commit waits for the disk (survives power loss);
    /// without it, commits survive a crash of the process but not of the machine.
    pub fn open(dir: Option<&Path>, fsync: bool) -> Result<Arc<SqliteOutbox>, OutboxError> {
        let lock = dir.map(lock).transpose()?;
        SqliteOutbox::start(dir, fsync, lock)
    }

    /// Opens the state folder of an engine that may be running, for operator
    /// commands (list, retry): no lock is taken.
    pub fn inspect(dir: &Path) -> Result<Arc<SqliteOutbox>, OutboxError> {
        if !dir.join(DB_FILE).is_file() {
            return Err(OutboxError::Open {
                path: dir.join(DB_FILE),
                reason: "no such file; is --state the folder the engine uses?".into(),
            });
        }
        SqliteOutbox::start(Some(dir), true, None)
    }

    fn start(
        dir: Option<&Path>,
        fsync: bool,
        lock: Option<std::fs::File>,
    ) -> Result<Arc<SqliteOutbox>, OutboxError> {
        let path = dir.map(|d| d.join(DB_FILE));
        let conn = open_connection(path.as_deref(), fsync).map_err(|reason| OutboxError::Open {
            path: path.clone().unwrap_or_else(|| PathBuf::from(":memory:")),
            reason,
        })?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wasmhooks-outbox".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| OutboxError::Store(format!("cannot start the outbox thread: {e}")))?;
        Ok(Arc::new(SqliteOutbox { jobs, _lock: lock }))
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
            Box::new(move |commit_error: Option<&str>| {
                let result = match (result, commit_error) {
                    (Err(e), _) => Err(OutboxError::Store(e.to_string())),
                    (Ok(_), Some(e)) => Err(OutboxError::Store(format!("commit failed: {e}"))),
                    (Ok(value), None) => Ok(value),
                };
                let _ = tx.send(result);
            })
        });
        let sent = self.jobs.send(job);
        Box::pin(async move {
            sent.map_err(|_| OutboxError::Closed)?;
            rx.await.map_err(|_| OutboxError::Closed)?
        })
    }
}

fn open_connection(path: Option<&Path>, fsync: bool) -> Result<Connection, String> {
    let conn = match path {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create the state folder: {e}"))?;
            }
            Connection::open(path)
        }
        None => Connection::open_in_memory(),
    }
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    // Every statement here runs often: keep them all prepared.
    conn.set_prepared_statement_cache_capacity(64);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("{e}; is it a SQLite database?"))?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "it has schema version {version}, newer than this build's {SCHEMA_VERSION}; \
             run a newer wasmhooks or point --state elsewhere"
        ));
    }
    let synchronous = if fsync { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
         BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};
         UPDATE deliveries SET claimed = 0 WHERE claimed = 1; COMMIT;"
    ))
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// The outbox thread: takes every waiting job into one transaction.
fn run(conn: Connection, jobs: mpsc::Receiver<Job>) {
    let (mut transactions, mut grouped, mut since) = (0u64, 0u64, std::time::Instant::now());
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        transactions += 1;
        grouped += batch.len() as u64;
        if since.elapsed() >= std::time::Duration::from_secs(5) {
            let per_second = transactions as f64 / since.elapsed().as_secs_f64();
            tracing::debug!(
                transactions_per_second = per_second as u64,
                jobs_per_transaction = grouped as f64 / transactions as f64,
                "outbox group commits"
            );
            (transactions, grouped, since) = (0, 0, std::time::Instant::now());
        }
        let begin = exec(&conn, "BEGIN IMMEDIATE");
        if let Err(e) = begin {
            tracing::warn!("state database: cannot group writes ({e}); committing one by one");
            for job in batch {
                // Outside a transaction, a savepoint is a transaction of
                // its own: each job commits (or fails) alone.
                job(&conn)(None);
            }
            continue;
        }
        let replies: Vec<Reply> = batch.into_iter().map(|job| job(&conn)).collect();
        let commit_error = exec(&conn, "COMMIT").err().map(|e| e.to_string());
        if commit_error.is_some() {
            let _ = exec(&conn, "ROLLBACK");
        }
        for reply in replies {
            reply(commit_error.as_deref());
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

impl Outbox for SqliteOutbox {
    fn journal(&self, uid: String, hooks: Vec<String>, payload: String) -> Fut<'_, i64> {
        self.call(move |conn| {
            let hooks = serde_json::to_string(&hooks).expect("strings serialize");
            conn.prepare_cached(
                "INSERT INTO events (uid, hooks, payload, accepted_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![uid, hooks, payload, to_sql(now_ms())])?;
            Ok(conn.last_insert_rowid())
        })
    }

    fn commit(
        &self,
        ticket: Option<i64>,
        claimed: Vec<Delivery>,
        queued: Vec<Delivery>,
    ) -> Fut<'_, ()> {
        let writes = claimed.len() + queued.len() + usize::from(ticket.is_some());
        self.call(move |conn| {
            if writes > 1 {
                atomically(conn, |conn| {
                    insert_deliveries(conn, ticket, &claimed, &queued)
                })
            } else {
                insert_deliveries(conn, ticket, &claimed, &queued)
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
                    hooks: serde_json::from_str(&hooks).unwrap_or_default(),
                    payload: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn claim(&self, now_ms: u64, limit: usize, room: Room) -> Fut<'_, Vec<Claimed>> {
        self.call(move |conn| atomically(conn, |conn| claim_due(conn, now_ms, limit, room)))
    }

    fn finish(&self, id: String, attempts: u32, how: Finish) -> Fut<'_, ()> {
        self.call(move |conn| {
            match how {
                Finish::Delivered => {
                    conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?
                        .execute([id])?;
                }
                Finish::Retry {
                    at_ms,
                    error,
                    status,
                } => {
                    conn.prepare_cached(
                        "UPDATE deliveries SET claimed = 0, attempts = ?2, next_ms = ?3,
                         last_error = ?4, last_status = ?5 WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        attempts,
                        to_sql(at_ms),
                        error,
                        status
                    ])?;
                }
                Finish::Dead { error, status } => {
                    conn.prepare_cached(
                        "UPDATE deliveries SET claimed = 0, dead = 1, attempts = ?2,
                         last_error = ?3, last_status = ?4 WHERE id = ?1",
                    )?
                    .execute(params![id, attempts, error, status])?;
                }
            }
            Ok(())
        })
    }

    fn next_due(&self) -> Fut<'_, Option<u64>> {
        self.call(|conn| {
            let next: Option<i64> = conn
                .prepare_cached(
                    "SELECT next_ms FROM deliveries WHERE dead = 0 AND claimed = 0
                     ORDER BY next_ms LIMIT 1",
                )?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(next.map(|n| n.max(0) as u64))
        })
    }

    fn backlog(&self) -> Fut<'_, usize> {
        self.call(|conn| {
            conn.query_row(
                "SELECT (SELECT count(*) FROM deliveries WHERE dead = 0)
                      + (SELECT count(*) FROM events)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as usize)
        })
    }

    fn list(&self, filter: Filter, limit: usize) -> Fut<'_, Vec<DeliveryInfo>> {
        self.call(move |conn| {
            let condition = match filter {
                Filter::Pending => "dead = 0",
                Filter::Failed => "dead = 0 AND attempts > 0",
                Filter::Dead => "dead = 1",
            };
            let mut stmt = conn.prepare(&format!(
                "SELECT id, hook, url, dead, attempts, created_ms, next_ms, last_error,
                        last_status, length(body)
                 FROM deliveries WHERE {condition} ORDER BY created_ms, id LIMIT ?1"
            ))?;
            let rows = stmt.query_map([to_sql(limit as u64)], |r| {
                let dead: bool = r.get(3)?;
                Ok(DeliveryInfo {
                    id: r.get(0)?,
                    hook: r.get(1)?,
                    url: r.get(2)?,
                    state: if dead { "dead" } else { "pending" },
                    attempts: r.get(4)?,
                    created_ms: r.get::<_, i64>(5)?.max(0) as u64,
                    next_ms: (!dead)
                        .then(|| r.get::<_, i64>(6))
                        .transpose()?
                        .map(|n| n.max(0) as u64),
                    last_error: r.get(7)?,
                    last_status: r.get(8)?,
                    body_bytes: r.get::<_, i64>(9)?.max(0) as usize,
                })
            })?;
            rows.collect()
        })
    }

    fn retry(&self, which: Retry) -> Fut<'_, usize> {
        self.call(move |conn| {
            let now = to_sql(now_ms());
            let set = "UPDATE deliveries SET dead = 0, claimed = 0, attempts = 0, next_ms = ?1";
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
                        pending: r.get::<_, i64>(1)?.max(0) as u64,
                        dead: r.get::<_, i64>(2)?.max(0) as u64,
                        oldest_ms: r.get::<_, Option<i64>>(3)?.map(|n| n.max(0) as u64),
                    },
                ))
            })?;
            rows.collect()
        })
    }
}

/// Claims up to `limit` due deliveries, within each receiver's room; those
/// of a paused receiver are held until it resumes.
fn claim_due(
    conn: &Connection,
    now_ms: u64,
    limit: usize,
    mut room: Room,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut picked = Vec::new();
    let mut held = Vec::new();
    {
        let mut due = conn.prepare_cached(
            "SELECT id, receiver FROM deliveries
             WHERE dead = 0 AND claimed = 0 AND next_ms <= ?1 ORDER BY next_ms",
        )?;
        let mut rows = due.query([to_sql(now_ms)])?;
        let mut scanned = 0;
        while picked.len() < limit && scanned < CLAIM_SCAN {
            let Some(row) = rows.next()? else { break };
            scanned += 1;
            let receiver: String = row.get(1)?;
            if let Some(&until) = room.paused.get(&receiver) {
                held.push((row.get::<_, String>(0)?, until));
                continue;
            }
            let left = room.per_receiver.entry(receiver).or_insert(room.default);
            if *left > 0 {
                *left -= 1;
                picked.push(row.get::<_, String>(0)?);
            }
        }
    }
    // Out of the due range until the receiver resumes, so later
    // claims do not scan them again.
    let mut hold = conn.prepare_cached("UPDATE deliveries SET next_ms = ?2 WHERE id = ?1")?;
    for (id, until) in held {
        hold.execute(params![id, to_sql(until)])?;
    }
    let mut claim = conn.prepare_cached(
        "UPDATE deliveries SET claimed = 1 WHERE id = ?1
         RETURNING hook, url, headers, body, attempts, signed",
    )?;
    let mut claimed = Vec::with_capacity(picked.len());
    for id in picked {
        let (hook, url, headers, body, attempts, signed) = claim.query_row([&id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })?;
        let Ok(url) = reqwest::Url::parse(&url) else {
            // Only a hand-edited database gets here.
            conn.execute(
                "UPDATE deliveries SET dead = 1, claimed = 0, last_error = 'URL is not valid' WHERE id = ?1",
                [&id],
            )?;
            continue;
        };
        claimed.push(Claimed {
            delivery: Delivery {
                id,
                hook: hook.into(),
                url,
                headers: headers_from_json(&headers),
                body: body.into(),
                signed,
            },
            attempts,
        });
    }
    Ok(claimed)
}

/// Queues `claimed` (being sent now) and `queued` deliveries, and retires
/// the journaled event `ticket`.
fn insert_deliveries(
    conn: &Connection,
    ticket: Option<i64>,
    claimed: &[Delivery],
    queued: &[Delivery],
) -> rusqlite::Result<()> {
    let now = to_sql(now_ms());
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO deliveries
           (id, hook, receiver, url, headers, body, signed, claimed, created_ms, next_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
    )?;
    let all = claimed
        .iter()
        .map(|d| (d, true))
        .chain(queued.iter().map(|d| (d, false)));
    for (d, claimed) in all {
        insert.execute(params![
            d.id,
            &*d.hook,
            d.receiver(),
            d.url.as_str(),
            headers_to_json(&d.headers),
            &d.body[..],
            d.signed,
            claimed,
            now
        ])?;
    }
    if let Some(ticket) = ticket {
        conn.prepare_cached("DELETE FROM events WHERE ticket = ?1")?
            .execute([ticket])?;
    }
    Ok(())
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
            map.append(k, v);
        }
    }
    map
}
