//! The database file: its lock, its schema and upgrades.

use super::QueueError;
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// The schema this build writes. Bump it, with a migration, on any change.
pub(super) const SCHEMA_VERSION: i64 = 5;

/// Schema 5 (4 without `archive`, which 5 only adds). `state` is 0 for a pending delivery, 1 for a dead letter, 2
/// for a delivered one (kept `delivery.history_hours` after `done_ms`);
/// `history` holds its latest attempts. `claimed` holds the id of the
/// engine run that claimed a row (0: not claimed); `allow` the hook's
/// `allow_hosts` when it was queued. Deliveries are keyed by `seq`, in the
/// order they are written; their ids have no index (see `ids.rs`: which
/// ids are in the table is kept in memory). `archive` holds the archive's
/// records (`[archive]`), in the order they were written.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    ticket      INTEGER PRIMARY KEY,
    uid         TEXT NOT NULL,
    hooks       TEXT NOT NULL,     -- JSON array of hook names
    payload     TEXT NOT NULL,     -- the event as accepted
    accepted_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL,     -- the webhook-id, unique
    hook        TEXT NOT NULL,
    receiver    TEXT NOT NULL,     -- host:port
    url         TEXT NOT NULL,
    headers     TEXT NOT NULL,     -- JSON array of [name, value]
    body        BLOB NOT NULL,
    signed      INTEGER NOT NULL,  -- the hook had a secret: never send unsigned
    state       INTEGER NOT NULL DEFAULT 0,  -- 0 pending, 1 dead, 2 delivered
    claimed     INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_ms  INTEGER NOT NULL,
    next_ms     INTEGER NOT NULL,
    last_error  TEXT,
    last_status INTEGER,
    allow       TEXT,              -- allow_hosts when queued; NULL: before schema 2
    done_ms     INTEGER,           -- when it was delivered
    history     TEXT               -- JSON array of its latest attempts
);
CREATE INDEX IF NOT EXISTS deliveries_ready ON deliveries (receiver, next_ms) WHERE state = 0 AND claimed = 0;
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (created_ms) WHERE state = 1;
CREATE INDEX IF NOT EXISTS deliveries_done ON deliveries (done_ms) WHERE state = 2;
CREATE TABLE IF NOT EXISTS accepted (
    key         TEXT PRIMARY KEY,  -- method, call id and phase of an accepted event
    at_ms       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS accepted_at ON accepted (at_ms);
CREATE TABLE IF NOT EXISTS archive (
    seq         INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL,  -- when it was archived
    record      BLOB NOT NULL      -- the archive's JSON
);
CREATE INDEX IF NOT EXISTS archive_at ON archive (at_ms);
";

/// From schema 1: the `allow` column, the per-receiver index, the keys.
pub(super) const MIGRATE_1: &str = "
ALTER TABLE deliveries ADD COLUMN allow TEXT;
DROP INDEX IF EXISTS deliveries_due;
";

/// From schema 2, before [`SCHEMA`]: the table keyed by its random ids is
/// set aside, for [`SCHEMA`] to create the new one and its indexes.
pub(super) const MIGRATE_2: &str = "
ALTER TABLE deliveries RENAME TO deliveries_2;
DROP INDEX IF EXISTS deliveries_ready;
DROP INDEX IF EXISTS deliveries_dead;
";

/// From schema 2, after [`SCHEMA`]: the rows, oldest first, into the new table.
pub(super) const MIGRATE_2_ROWS: &str = "
INSERT INTO deliveries (id, hook, receiver, url, headers, body, signed, state, claimed,
                        attempts, created_ms, next_ms, last_error, last_status, allow)
SELECT id, hook, receiver, url, headers, body, signed, dead, claimed,
       attempts, created_ms, next_ms, last_error, last_status, allow
FROM deliveries_2 ORDER BY created_ms, id;
DROP TABLE deliveries_2;
";

/// From schema 3: `dead` becomes `state` (its indexes follow), with room
/// for delivered deliveries and attempts.
pub(super) const MIGRATE_3: &str = "
ALTER TABLE deliveries RENAME COLUMN dead TO state;
ALTER TABLE deliveries ADD COLUMN done_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN history TEXT;
";

/// The database's file name in the state folder.
pub(super) const DB_FILE: &str = "wasmhooks.db";

/// Takes the state folder's lock file, so two engines never share a queue.
pub(super) fn lock(dir: &Path) -> Result<std::fs::File, QueueError> {
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
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub(super) fn open_error(path: Option<&Path>, e: rusqlite::Error) -> QueueError {
    QueueError::Open {
        path: path.map_or_else(|| PathBuf::from(":memory:"), Path::to_owned),
        reason: e.to_string(),
        source: Some(e),
    }
}

pub(super) fn open_connection(path: Option<&Path>, fsync: bool) -> Result<Connection, QueueError> {
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

pub(super) fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Creates or upgrades the schema, and reclaims every claim: the caller
/// holds the folder's lock, so the runs that claimed them are gone.
pub(super) fn migrate(conn: &Connection, path: Option<&Path>) -> Result<(), QueueError> {
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
    let (before, after) = match version {
        1 => (format!("{MIGRATE_1} {MIGRATE_2}"), MIGRATE_2_ROWS),
        2 => (MIGRATE_2.to_owned(), MIGRATE_2_ROWS),
        3 => (MIGRATE_3.to_owned(), ""),
        _ => (String::new(), ""),
    };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {before} {SCHEMA} {after} PRAGMA user_version = {SCHEMA_VERSION};
         UPDATE deliveries SET claimed = 0 WHERE claimed != 0; COMMIT;"
    ))
    .map_err(|e| open_error(path, e))
}
