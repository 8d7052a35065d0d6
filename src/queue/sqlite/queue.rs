//! [`Queue`] on SQLite: each method a job for the connection's thread.

use super::claim::claim_due;
use super::rows::{accept_key, from_sql, record, to_sql, write_batch};
use super::writer::{Store, atomically};
use super::{
    AttemptRecord, Batch, Claim, Committed, DeadLetters, DeliveryDetail, DeliveryInfo,
    DeliveryQuery, DeliveryState, Depth, Finish, Fut, Journaled, Queue, Room, SqliteQueue,
};
use crate::delivery::history::shown_headers;
use crate::util::now_ms;
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
            use rusqlite::types::Value;
            let mut sql = format!("SELECT {INFO} FROM deliveries WHERE ");
            sql.push_str(match query.state {
                DeliveryState::Pending => "state = 0",
                DeliveryState::Failed => "state = 0 AND attempts > 0",
                DeliveryState::Dead => "state = 1",
                DeliveryState::Delivered => "state = 2",
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
            let rows = stmt.query_map(rusqlite::params_from_iter(args), info)?;
            rows.collect()
        })
    }

    fn get(&self, id: String) -> Fut<'_, Option<DeliveryDetail>> {
        let keep = self.history.attempts;
        self.call(move |store| {
            let Some(seq) = store.ids.seq(&store.conn, &id)? else {
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
                    history.drain(..history.len().saturating_sub(keep));
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

    fn retry(&self, which: DeadLetters) -> Fut<'_, usize> {
        self.call(move |store| {
            let now = to_sql(now_ms());
            // Dead letters are never claimed: this touches no claim.
            let set = "UPDATE deliveries SET state = 0, attempts = 0, next_ms = ?1";
            match which {
                DeadLetters::One(id) => match store.ids.seq(&store.conn, &id)? {
                    Some(seq) => store.execute(
                        &format!("{set} WHERE seq = ?2 AND state = 1"),
                        params![now, seq],
                    ),
                    None => Ok(0),
                },
                DeadLetters::All => store.execute(&format!("{set} WHERE state = 1"), [now]),
            }
        })
    }

    fn purge_dead(&self, before_ms: u64) -> Fut<'_, usize> {
        self.call(move |store| {
            purge(
                store,
                "DELETE FROM deliveries WHERE state = 1 AND created_ms <= ?1 RETURNING id",
                before_ms,
            )
        })
    }

    fn purge_delivered(&self, before_ms: u64) -> Fut<'_, usize> {
        self.call(move |store| {
            purge(
                store,
                "DELETE FROM deliveries WHERE state = 2 AND done_ms <= ?1 RETURNING id",
                before_ms,
            )
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

/// Deletes the rows `sql` (a `DELETE … RETURNING id` with `?1`) names.
fn purge(store: &mut Store, sql: &str, before_ms: u64) -> rusqlite::Result<usize> {
    let purged: Vec<String> = store
        .prepare_cached(sql)?
        .query_map([to_sql(before_ms)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    store.ids.remove(purged.iter().map(String::as_str));
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
        _ => "delivered",
    };
    Ok(DeliveryInfo {
        id: r.get(0)?,
        hook: r.get(1)?,
        url: r.get(2)?,
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
