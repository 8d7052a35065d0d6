//! The SQLite queue's own behaviour; the shared one is in `conformance.rs`.

use super::claim::claim_due;
use super::rows::{record, sql, write_batch};
use super::*;
use crate::delivery::{Delivery, QueuedUnder};
use crate::util::now_ms;

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
