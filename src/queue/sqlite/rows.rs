//! The statements every delivery runs, and the rows they read and write.

use super::super::codec::{header_map, header_pairs};
use super::writer::Store;
use super::{AttemptRecord, Batch, Committed, Finish, History};
use crate::util::now_ms;
use reqwest::header::HeaderMap;
use rusqlite::{Connection, params};

/// A number of ms or a count as SQLite stores it.
pub(super) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A number SQLite stored, back.
pub(super) fn from_sql(v: i64) -> u64 {
    v.max(0) as u64
}

/// The statements that run for every delivery. Each is prepared once and
/// must stay so: SQLite plans some statements again on every run when a
/// bound value could change the plan (an `=` on an indexed column with an
/// `ORDER BY`, a `LIMIT ?`, under `SQLITE_ENABLE_STAT4`), and planning costs
/// more than running them. Values that must not steer the plan are passed
/// as `(SELECT ?n)`. The `hot_statements_are_planned_once` test holds them
/// to it.
pub(super) mod sql {
    pub(crate) const ACCEPT_KEY: &str =
        "INSERT INTO accepted (key, at_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING";
    pub(crate) const INSERT_DELIVERY: &str = "INSERT INTO deliveries
           (id, hook, receiver, url, headers, body, signed, allow, claimed, created_ms, next_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)";
    pub(crate) const RETIRE_EVENT: &str = "DELETE FROM events WHERE ticket = ?1";
    /// The next receiver with unclaimed rows: one seek in `deliveries_ready`.
    pub(crate) const NEXT_RECEIVER: &str = "SELECT receiver FROM deliveries
         WHERE state = 0 AND claimed = 0 AND receiver > ?1 ORDER BY receiver LIMIT 1";
    /// A receiver's unclaimed rows, soonest due first, in `deliveries_ready`'s order.
    pub(crate) const OLDEST_DUE: &str = "SELECT seq, next_ms FROM deliveries
         WHERE state = 0 AND claimed = 0 AND receiver = (SELECT ?1)
         ORDER BY next_ms LIMIT (SELECT ?2)";
    pub(crate) const TAKE: &str = "UPDATE deliveries SET claimed = ?2 WHERE seq = ?1
         RETURNING id, hook, url, headers, body, attempts, signed, allow";
    /// `history` with the attempt `?3` (JSON; NULL: none kept) appended,
    /// the oldest dropped once it holds `?4`.
    macro_rules! append {
        () => {
            "history = CASE WHEN ?3 IS NULL THEN history ELSE json_insert(
                 CASE WHEN json_array_length(coalesce(history, '[]')) >= ?4
                      THEN json_remove(history, '$[0]') ELSE coalesce(history, '[]') END,
                 '$[#]', json(?3)) END"
        };
    }
    /// Delivered, kept as history.
    pub(crate) const DELIVERED: &str = concat!(
        "UPDATE deliveries SET claimed = 0, state = 2, attempts = ?2, ",
        append!(),
        ", done_ms = ?5, last_error = NULL, last_status = ?6 WHERE seq = ?1 AND claimed = ?7"
    );
    /// Delivered, not kept.
    pub(crate) const DELIVERED_GONE: &str =
        "DELETE FROM deliveries WHERE seq = ?1 AND claimed = ?2";
    pub(crate) const RETRY: &str = concat!(
        "UPDATE deliveries SET claimed = 0, attempts = ?2, ",
        append!(),
        ", next_ms = ?5, last_error = ?6, last_status = ?7 WHERE seq = ?1"
    );
    pub(crate) const DEAD: &str = concat!(
        "UPDATE deliveries SET claimed = 0, state = 1, attempts = ?2, ",
        append!(),
        ", last_error = ?5, last_status = ?6 WHERE seq = ?1 AND claimed = ?7"
    );
    /// Every statement above.
    #[cfg(test)]
    pub(crate) const ALL: [&str; 10] = [
        ACCEPT_KEY,
        INSERT_DELIVERY,
        RETIRE_EVENT,
        NEXT_RECEIVER,
        OLDEST_DUE,
        TAKE,
        DELIVERED,
        DELIVERED_GONE,
        RETRY,
        DEAD,
    ];
}

/// Records `key` as accepted now; false if it already was.
pub(super) fn accept_key(conn: &Connection, key: &str) -> rusqlite::Result<bool> {
    let inserted = conn
        .prepare_cached(sql::ACCEPT_KEY)?
        .execute(params![key, to_sql(now_ms())])?;
    Ok(inserted == 1)
}

/// Records how an attempt of `id` by `run` ended, and keeps `record`.
pub(super) fn record(
    store: &mut Store,
    run: i64,
    history: History,
    id: &str,
    attempts: u32,
    how: Finish,
    record: &AttemptRecord,
) -> rusqlite::Result<()> {
    let Some(seq) = store.ids.seq(&store.conn, id)? else {
        return Ok(()); // not queued (any more): nothing to record
    };
    let conn = &store.conn;
    let kept =
        (history.attempts > 0).then(|| serde_json::to_string(record).expect("a record serializes"));
    let keep = to_sql(history.attempts as u64);
    let (error, status) = (record.error.as_deref(), record.status);
    match how {
        Finish::Delivered if history.delivered.is_zero() => {
            let deleted = conn
                .prepare_cached(sql::DELIVERED_GONE)?
                .execute(params![seq, run])?;
            if deleted == 1 {
                store.ids.remove([(id, seq)]);
            }
            Ok(())
        }
        Finish::Delivered => {
            let kept = conn.prepare_cached(sql::DELIVERED)?.execute(params![
                seq,
                attempts,
                kept,
                keep,
                to_sql(now_ms()),
                status,
                run
            ])?;
            if kept == 1 {
                // Kept as history, out of the ids of what is queued.
                store.ids.remove([(id, seq)]);
            }
            Ok(())
        }
        Finish::Retry { at_ms } => conn
            .prepare_cached(sql::RETRY)?
            .execute(params![
                seq,
                attempts,
                kept,
                keep,
                to_sql(at_ms),
                error,
                status
            ])
            .map(drop),
        Finish::Dead => conn
            .prepare_cached(sql::DEAD)?
            .execute(params![seq, attempts, kept, keep, error, status, run])
            .map(drop),
    }
}

/// Writes a batch: its key, its deliveries (those `claimed` as claimed by
/// `run`), and retires its journaled event. A delivery whose id is queued
/// already is left out.
pub(super) fn write_batch(
    store: &mut Store,
    run: i64,
    batch: &Batch,
) -> rusqlite::Result<Committed> {
    if let Some(key) = &batch.key
        && !accept_key(store, key)?
    {
        return Ok(Committed::Duplicate);
    }
    let now = to_sql(now_ms());
    let all = batch
        .claimed
        .iter()
        .map(|d| (d, run))
        .chain(batch.queued.iter().map(|d| (d, 0)));
    let (mut written, mut rows) = (Vec::new(), Vec::new());
    for (d, claimed) in all {
        let twice = rows.iter().any(|(id, _)| *id == d.id);
        if twice || store.ids.seq(&store.conn, &d.id)?.is_some() {
            continue;
        }
        store
            .conn
            .prepare_cached(sql::INSERT_DELIVERY)?
            .execute(params![
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
        rows.push((d.id.clone(), store.conn.last_insert_rowid()));
        if claimed != 0 {
            written.push(d.id.clone());
        }
    }
    if let Some(ticket) = batch.ticket {
        store
            .conn
            .prepare_cached(sql::RETIRE_EVENT)?
            .execute([ticket])?;
    }
    store.ids.insert(&store.conn, rows)?;
    Ok(Committed::Done { claimed: written })
}

pub(super) fn headers_to_json(headers: &HeaderMap) -> String {
    serde_json::to_string(&header_pairs(headers)).expect("strings serialize")
}

pub(super) fn headers_from_json(text: &str) -> HeaderMap {
    header_map(serde_json::from_str(text).unwrap_or_default())
}
