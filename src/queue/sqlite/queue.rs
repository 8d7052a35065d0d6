//! [`Queue`] on SQLite: each method a job for the connection's thread.

use super::claim::claim_due;
use super::rows::{accept_key, from_sql, record, to_sql, write_batch};
use super::writer::{Store, atomically};
use super::{
    ArchiveBounds, Archived, AttemptRecord, Batch, Claim, Committed, DeliveryDetail,
    DeliveryFilter, DeliveryInfo, DeliveryQuery, DeliveryState, Depth, Finish, Fut, Journaled,
    Queue, Replay, Room, SqliteQueue,
};
use crate::delivery::history::{keep_latest, shown_headers, shown_url};
use crate::util::now_ms;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

impl Queue for SqliteQueue {
    fn journal(&self, event: Journaled) -> Fut<'_, Option<i64>> {
        self.call(move |store| {
            atomically(store, |conn| {
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
        self.call(move |store| {
            if writes > 1 {
                atomically(store, |store| write_batch(store, run, &batch))
            } else {
                write_batch(store, run, &batch)
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
        self.call(move |store| {
            let mut cursor = cursor.lock().unwrap();
            atomically(store, |store| {
                claim_due(store, run, now_ms, limit, &room, &mut cursor)
            })
        })
    }

    fn finish(
        &self,
        id: String,
        attempts: u32,
        how: Finish,
        attempt: AttemptRecord,
    ) -> Fut<'_, ()> {
        let (run, history) = (self.run, self.history);
        self.call(move |store| record(store, run, history, &id, attempts, how, &attempt))
    }

    fn backlog(&self) -> Fut<'_, usize> {
        self.call(|conn| {
            conn.query_row(
                "SELECT (SELECT count(*) FROM deliveries WHERE state = 0)
                      + (SELECT count(*) FROM events)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| from_sql(n) as usize)
        })
    }

    fn list(&self, query: DeliveryQuery) -> Fut<'_, Vec<DeliveryInfo>> {
        self.call(move |conn| {
            let state = match query.filter.state {
                DeliveryState::Pending => "state = 0",
                DeliveryState::Failed => "state = 0 AND attempts > 0",
                DeliveryState::Dead => "state = 1",
                DeliveryState::Delivered => "state = 2",
            };
            let mut w = Where::filtered(state, query.filter);
            if let Some((ms, id)) = query.after {
                w.and(
                    "(created_ms, id) > (?, ?)",
                    Some(Value::Integer(to_sql(ms))),
                );
                w.args.push(Value::Text(id));
            }
            w.args.push(Value::Integer(to_sql(query.limit as u64)));
            let sql = format!(
                "SELECT {INFO} FROM deliveries WHERE {} ORDER BY created_ms, id LIMIT ?",
                w.sql
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(w.args), info)?;
            rows.collect()
        })
    }

    fn get(&self, id: String) -> Fut<'_, Option<DeliveryDetail>> {
        let keep = self.history.attempts;
        self.call(move |store| {
            let Some(seq) = seq_of(store, &id)? else {
                return Ok(None);
            };
            store
                .prepare_cached(&format!(
                    "SELECT {INFO}, headers, history FROM deliveries WHERE seq = ?1"
                ))?
                .query_row([seq], |r| {
                    let headers: String = r.get(INFO_COLUMNS)?;
                    let history: Option<String> = r.get(INFO_COLUMNS + 1)?;
                    let mut history: Vec<AttemptRecord> = history
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or_default();
                    keep_latest(&mut history, keep);
                    Ok(DeliveryDetail {
                        delivery: info(r)?,
                        headers: shown_headers(
                            &serde_json::from_str::<Vec<(String, String)>>(&headers)
                                .unwrap_or_default(),
                        ),
                        history,
                    })
                })
                .optional()
        })
    }

    fn retry(&self, which: Replay, dry_run: bool) -> Fut<'_, usize> {
        self.call(move |store| atomically(store, |store| replay(store, which, dry_run)))
    }

    fn purge_dead(&self, before_ms: u64) -> Fut<'_, usize> {
        self.call(move |store| {
            purge(
                store,
                "DELETE FROM deliveries WHERE state = 1 AND created_ms <= ?1 RETURNING id, seq",
                before_ms,
            )
        })
    }

    fn purge_delivered(&self, before_ms: u64) -> Fut<'_, usize> {
        Box::pin(async move {
            // An hour of deliveries, a thousand per job: the jobs waiting
            // (commits, claims) go in between.
            let mut purged = 0;
            loop {
                let n = self
                    .call(move |store| {
                        purge(
                            store,
                            "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries
                             WHERE state = 2 AND done_ms <= ?1 LIMIT 1000) RETURNING id, seq",
                            before_ms,
                        )
                    })
                    .await?;
                purged += n;
                if n < 1000 {
                    return Ok(purged);
                }
            }
        })
    }

    fn forget_keys(&self, before_ms: u64) -> Fut<'_, usize> {
        self.call(move |conn| {
            conn.prepare_cached("DELETE FROM accepted WHERE at_ms <= ?1")?
                .execute([to_sql(before_ms)])
        })
    }

    fn archive(&self, records: Vec<Archived>, bounds: ArchiveBounds) -> Fut<'_, usize> {
        self.append_archive(records, bounds)
    }

    fn archived(&self, from_ms: u64, after: u64, limit: usize) -> Fut<'_, Vec<Archived>> {
        self.read_archive(from_ms, after, limit)
    }

    fn depth(&self) -> Fut<'_, HashMap<String, Depth>> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT receiver, sum(state = 0), sum(state = 1), min(CASE WHEN state = 0 THEN created_ms END)
                 FROM deliveries WHERE state < 2 GROUP BY receiver",
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

/// Makes the rows `which` names pending again, due now (with `dry_run`,
/// counts them). What is claimed is in flight, or about to be: left to its
/// run.
fn replay(store: &mut Store, which: Replay, dry_run: bool) -> rusqlite::Result<usize> {
    let w = match which {
        Replay::One(id) => match seq_of(store, &id)? {
            Some(seq) => {
                let mut w = Where::new("(state != 0 OR attempts > 0) AND claimed = 0");
                w.and("seq = ?", Some(Value::Integer(seq)));
                w
            }
            None => return Ok(0),
        },
        Replay::Matching(f) => {
            let state = match f.state {
                DeliveryState::Pending | DeliveryState::Failed => {
                    "state = 0 AND attempts > 0 AND claimed = 0"
                }
                DeliveryState::Dead => "state = 1",
                DeliveryState::Delivered => "state = 2",
            };
            Where::filtered(state, f)
        }
    };
    let sql = format!("SELECT id, seq, state FROM deliveries WHERE {}", w.sql);
    let found: Vec<(String, i64, i64)> = store
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(w.args), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    // A delivered row whose id was queued again since (a live row
    // of the same id) stays history: the live one is sent.
    let mut taken = Vec::with_capacity(found.len());
    for (id, seq, state) in found {
        if state == 2 && store.ids.seq(&store.conn, &id)?.is_some() {
            continue;
        }
        taken.push((id, seq));
    }
    if dry_run {
        return Ok(taken.len());
    }
    let now = to_sql(now_ms());
    let mut update = store.conn.prepare_cached(
        "UPDATE deliveries SET state = 0, attempts = 0, done_ms = NULL, next_ms = ?2 \
         WHERE seq = ?1",
    )?;
    for (_, seq) in &taken {
        update.execute(params![seq, now])?;
    }
    drop(update);
    let n = taken.len();
    // Delivered ones are queued again: among the ids in memory.
    store.ids.insert(&store.conn, taken)?;
    Ok(n)
}

/// The row of `id`: a pending or dead one from the ids in memory, else the
/// latest delivered one, found by reading the table (for operators only).
fn seq_of(store: &mut Store, id: &str) -> rusqlite::Result<Option<i64>> {
    if let Some(seq) = store.ids.seq(&store.conn, id)? {
        return Ok(Some(seq));
    }
    store
        .prepare_cached("SELECT max(seq) FROM deliveries WHERE state = 2 AND id = ?1")?
        .query_row([id], |r| r.get(0))
}

/// A `WHERE` clause and its arguments, in order (`?` placeholders).
struct Where {
    sql: String,
    args: Vec<Value>,
}

impl Where {
    fn new(sql: &str) -> Where {
        Where {
            sql: sql.to_owned(),
            args: Vec::new(),
        }
    }

    /// Rows in `state` (SQL) that `filter` matches, its state aside.
    fn filtered(state: &str, filter: DeliveryFilter) -> Where {
        let mut w = Where::new(state);
        let ms = |v: Option<u64>| v.map(|v| Value::Integer(to_sql(v)));
        w.and("hook = ?", filter.hook.map(Value::Text));
        w.and("receiver = ?", filter.receiver.map(Value::Text));
        w.and("created_ms >= ?", ms(filter.from_ms));
        w.and("created_ms < ?", ms(filter.to_ms));
        w
    }

    /// Adds `AND condition` with its first argument, if there is one.
    fn and(&mut self, condition: &str, value: Option<Value>) {
        if let Some(value) = value {
            self.sql.push_str(" AND ");
            self.sql.push_str(condition);
            self.args.push(value);
        }
    }
}

/// Deletes the rows `sql` (a `DELETE … RETURNING id, seq` with `?1`) names.
fn purge(store: &mut Store, sql: &str, before_ms: u64) -> rusqlite::Result<usize> {
    let purged: Vec<(String, i64)> = store
        .prepare_cached(sql)?
        .query_map([to_sql(before_ms)], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    store
        .ids
        .remove(purged.iter().map(|(id, seq)| (id.as_str(), *seq)));
    Ok(purged.len())
}

/// The columns [`info`] reads, first in a `SELECT`.
const INFO: &str = "id, hook, url, state, attempts, created_ms, next_ms, last_error,
    last_status, length(body), receiver, done_ms";

/// How many columns [`INFO`] names.
const INFO_COLUMNS: usize = 12;

/// A delivery as operators see it, from a row that begins with [`INFO`].
fn info(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryInfo> {
    let state = match r.get::<_, i64>(3)? {
        0 => "pending",
        1 => "dead",
        2 => "delivered",
        _ => "unknown",
    };
    Ok(DeliveryInfo {
        id: r.get(0)?,
        hook: r.get(1)?,
        url: shown_url(&r.get::<_, String>(2)?),
        receiver: r.get(10)?,
        state,
        attempts: r.get(4)?,
        created_ms: from_sql(r.get(5)?),
        next_ms: (state == "pending")
            .then(|| r.get(6))
            .transpose()?
            .map(from_sql),
        delivered_ms: r.get::<_, Option<i64>>(11)?.map(from_sql),
        last_error: r.get(7)?,
        last_status: r.get(8)?,
        body_bytes: from_sql(r.get(9)?) as usize,
    })
}
