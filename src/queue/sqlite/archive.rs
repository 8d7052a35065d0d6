//! The archive's records in SQLite: appended in one transaction per
//! batch, trimmed to their bounds in the same one.

use super::rows::{from_sql, to_sql};
use super::writer::{Store, atomically};
use super::{ArchiveBounds, Archived, Fut, QueueError, SqliteQueue};
use crate::util::now_ms;
use rusqlite::params;
use std::sync::Mutex;

impl SqliteQueue {
    /// See [`Queue::archive`](super::Queue::archive).
    pub(super) fn append_archive(
        &self,
        records: Vec<Archived>,
        bounds: ArchiveBounds,
    ) -> Fut<'_, usize> {
        let total = self.archived_bytes.clone();
        let write = self.call(move |store| {
            atomically(store, |store| {
                let mut added = 0;
                let mut insert =
                    store.prepare_cached("INSERT INTO archive (at_ms, record) VALUES (?1, ?2)")?;
                for r in &records {
                    insert.execute(params![to_sql(r.at_ms), r.record])?;
                    added += r.record.len() as u64;
                }
                drop(insert);
                trim(store, bounds, added, &total).map(|()| 0)
            })
        });
        let total = self.archived_bytes.clone();
        Box::pin(async move {
            let written = write.await;
            if written.is_err() {
                // Not written, or not all: count again next time.
                *total.lock().unwrap() = None;
            }
            written
        })
    }

    /// See [`Queue::archived`](super::Queue::archived): on a read-only
    /// connection of its own (WAL lets it read beside the writer), so a
    /// long export or simulation never holds the writer's thread or the
    /// file's write lock; in memory, on the writer's.
    pub(super) fn read_archive(
        &self,
        from_ms: u64,
        after: u64,
        limit: usize,
    ) -> Fut<'_, Vec<Archived>> {
        let Some(path) = self.path.clone() else {
            return self.call(move |store| page(store, from_ms, after, limit));
        };
        let reader = self.reader.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut reader = reader.lock().unwrap();
                if reader.is_none() {
                    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
                    let conn = rusqlite::Connection::open_with_flags(&path, flags)?;
                    conn.busy_timeout(std::time::Duration::from_secs(10))?;
                    *reader = Some(conn);
                }
                Ok(page(
                    reader.as_ref().expect("opened"),
                    from_ms,
                    after,
                    limit,
                )?)
            })
            .await
            .map_err(|_| QueueError::Closed)?
        })
    }
}

/// One page of the archive: see [`Queue::archived`](super::Queue::archived).
fn page(
    conn: &rusqlite::Connection,
    from_ms: u64,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Archived>> {
    conn.prepare_cached(
        "SELECT seq, at_ms, record FROM archive WHERE seq > ?1 AND at_ms >= ?2
         ORDER BY seq LIMIT ?3",
    )?
    .query_map(
        params![
            to_sql(after),
            to_sql(from_ms),
            limit.min(i64::MAX as usize) as i64
        ],
        |r| {
            Ok(Archived {
                seq: from_sql(r.get(0)?),
                at_ms: from_sql(r.get(1)?),
                record: r.get(2)?,
            })
        },
    )?
    .collect()
}

/// Drops the records older than `bounds.max_age`, then the oldest ones
/// while the records' bytes (`total`, counted once, then kept up to date,
/// plus `added`) exceed `bounds.max_bytes`.
fn trim(
    store: &mut Store,
    bounds: ArchiveBounds,
    added: u64,
    total: &Mutex<Option<u64>>,
) -> rusqlite::Result<()> {
    let mut total = total.lock().unwrap();
    let mut bytes = match *total {
        Some(bytes) => bytes + added,
        None => from_sql(store.query_row(
            "SELECT COALESCE(SUM(length(record)), 0) FROM archive",
            [],
            |r| r.get(0),
        )?),
    };
    let cutoff = now_ms().saturating_sub(bounds.max_age.as_millis() as u64);
    let old: i64 = store
        .prepare_cached("SELECT COALESCE(SUM(length(record)), 0) FROM archive WHERE at_ms < ?1")?
        .query_row([to_sql(cutoff)], |r| r.get(0))?;
    if old > 0 {
        store
            .prepare_cached("DELETE FROM archive WHERE at_ms < ?1")?
            .execute([to_sql(cutoff)])?;
        bytes = bytes.saturating_sub(from_sql(old));
    }
    if bytes > bounds.max_bytes {
        let excess = bytes - bounds.max_bytes;
        let (mut freed, mut last) = (0, None);
        let mut oldest =
            store.prepare_cached("SELECT seq, length(record) FROM archive ORDER BY seq")?;
        let mut rows = oldest.query([])?;
        while let Some(row) = rows.next()? {
            freed += from_sql(row.get(1)?);
            last = Some(row.get::<_, i64>(0)?);
            if freed >= excess {
                break;
            }
        }
        drop(rows);
        drop(oldest);
        if let Some(last) = last {
            store
                .prepare_cached("DELETE FROM archive WHERE seq <= ?1")?
                .execute([last])?;
            bytes = bytes.saturating_sub(freed);
        }
    }
    *total = Some(bytes);
    Ok(())
}
