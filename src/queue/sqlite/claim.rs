//! Claiming due deliveries, within each receiver's room.

use super::rows::{from_sql, headers_from_json, sql};
use super::{Claim, Claimed, Room};
use crate::delivery::{Delivery, QueuedUnder};
use rusqlite::{Connection, params};

/// Receivers looked at per claim at most: hooks choose URLs, so a claim's
/// cost stays bounded however many receivers have deliveries waiting.
pub(super) const CLAIM_RECEIVERS: usize = 4096;

/// Claims up to `limit` due deliveries, within each receiver's room. The
/// receivers with unclaimed rows are found by skipping through the
/// `deliveries_ready` index (one seek per receiver), and each one with room
/// is asked for its oldest due rows: the cost depends on the receivers
/// and the rows taken, never on how many wait.
pub(super) fn claim_due(
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
            picked.push(row.get::<_, i64>(0)?);
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
    for seq in picked {
        let row = take.query_row(params![seq, run], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, bool>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        let (id, hook, url, headers, body, attempts, signed, allow) = row;
        let Ok(url) = reqwest::Url::parse(&url) else {
            // Only a hand-edited database gets here.
            conn.execute(
                "UPDATE deliveries SET state = 1, claimed = 0, last_error = 'URL is not valid' WHERE seq = ?1",
                [seq],
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
pub(super) fn receivers_after(
    conn: &Connection,
    after: &str,
    n: usize,
) -> rusqlite::Result<Vec<String>> {
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
