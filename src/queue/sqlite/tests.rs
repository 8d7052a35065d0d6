//! The SQLite queue's own behaviour; the shared one is in `conformance.rs`.

use super::claim::claim_due;
use super::rows::{record, sql, write_batch};
use super::*;
use crate::delivery::{Delivery, QueuedUnder};
use crate::queue::DeliveryAdmin;
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

/// An attempt's record, answered `status`.
fn answered(how: Finish, status: u16) -> AttemptRecord {
    AttemptRecord {
        at_ms: now_ms(),
        duration_ms: 1,
        outcome: how.outcome(),
        status: Some(status),
        error: (how != Finish::Delivered).then(|| format!("receiver answered {status}")),
        headers: Vec::new(),
        body: Some(String::new()),
        body_truncated: false,
        engine: "test/1".into(),
    }
}

/// Planning a statement costs more than running it: the ones that run
/// for every delivery are planned once, whatever values they are given.
#[test]
fn hot_statements_are_planned_once() {
    let conn = open_connection(None, false).unwrap();
    migrate(&conn, None).unwrap();
    let mut store = writer::Store::new(conn);
    let (run, mut cursor) = (7, String::new());
    for round in 0..4u32 {
        let ticket = store
            .execute(
                "INSERT INTO events (uid, hooks, payload, accepted_ms) VALUES ('u', '[]', '{}', 0)",
                [],
            )
            .map(|_| store.last_insert_rowid())
            .unwrap();
        let batch = Batch {
            ticket: Some(ticket),
            key: Some(format!("key{round}")),
            claimed: vec![delivery(10 * round)],
            queued: (1..5).map(|i| delivery(10 * round + i)).collect(),
        };
        write_batch(&mut store, run, &batch).unwrap();
        let room = Room {
            default: 1 + round as usize,
            ..Room::default()
        };
        let claim = claim_due(&store, run, now_ms(), 8, &room, &mut cursor).unwrap();
        assert!(!claim.claimed.is_empty());
        let ends = [
            Finish::Delivered,
            Finish::Retry {
                at_ms: now_ms() + u64::from(round),
            },
            Finish::Dead,
        ];
        // Kept, then not, so that every statement runs with both.
        let history = if round % 2 == 0 {
            History::default()
        } else {
            History {
                attempts: 0,
                delivered: std::time::Duration::ZERO,
            }
        };
        let ids = std::iter::once(format!("d{}", 10 * round))
            .chain(claim.claimed.iter().map(|c| c.delivery.id.clone()));
        for (id, how) in ids.zip(ends.into_iter().cycle()) {
            let attempt = answered(how, 500 + round as u16);
            record(&mut store, run, history, &id, round + 1, how, &attempt).unwrap();
        }
    }
    for sql in sql::ALL {
        let planned = store
            .prepare_cached(sql)
            .unwrap()
            .get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(planned, 0, "planned again {planned} times: {sql}");
    }
}

/// Schema 2, as builds before schema 3 wrote it: deliveries keyed by their id.
const SCHEMA_2: &str = "
CREATE TABLE events (ticket INTEGER PRIMARY KEY, uid TEXT NOT NULL, hooks TEXT NOT NULL,
    payload TEXT NOT NULL, accepted_ms INTEGER NOT NULL);
CREATE TABLE deliveries (id TEXT PRIMARY KEY, hook TEXT NOT NULL, receiver TEXT NOT NULL,
    url TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL, signed INTEGER NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0, claimed INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL,
    last_error TEXT, last_status INTEGER, allow TEXT);
CREATE INDEX deliveries_ready ON deliveries (receiver, next_ms) WHERE dead = 0 AND claimed = 0;
CREATE INDEX deliveries_dead ON deliveries (created_ms) WHERE dead = 1;
CREATE TABLE accepted (key TEXT PRIMARY KEY, at_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX accepted_at ON accepted (at_ms);
INSERT INTO deliveries (id, hook, receiver, url, headers, body, signed, dead, claimed,
    attempts, created_ms, next_ms, last_error, allow)
VALUES ('msg_pending', 'hook', 'r0.test:80', 'http://r0.test/path', '[[\"x-one\",\"1\"]]',
        X'7B7D', 1, 0, 42, 1, 1000, 1000, 'timed out', '127.0.0.1/32'),
       ('msg_dead', 'hook', 'r1.test:80', 'http://r1.test/path', '[]',
        X'7B7D', 0, 1, 0, 5, 900, 900, 'refused', NULL);
INSERT INTO accepted VALUES ('k1', 1000);
PRAGMA user_version = 2;
";

/// A state folder that `schema` (SQL) wrote, opened by this build.
fn written_by(schema: &str) -> (tempfile::TempDir, Arc<SqliteQueue>) {
    let dir = tempfile::tempdir().unwrap();
    rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .execute_batch(schema)
        .unwrap();
    let queue = SqliteQueue::open(Some(dir.path()), false, History::default()).unwrap();
    (dir, queue)
}

fn queued(d: Delivery) -> Batch {
    Batch {
        queued: vec![d],
        ..Batch::default()
    }
}

fn with_id(id: &str) -> Delivery {
    Delivery {
        id: id.to_owned(),
        ..delivery(0)
    }
}

/// A state folder written by schema 2 keeps every delivery, its claim
/// released, its attempts and its policy, and its ids stay unique.
#[tokio::test]
async fn an_upgrade_from_schema_2_keeps_every_delivery() {
    let (_dir, queue) = written_by(SCHEMA_2);
    assert_eq!(queue.backlog().await.unwrap(), 1);
    let dead = queue
        .list(DeliveryQuery::new(DeliveryState::Dead, 10))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id.as_str(), dead[0].attempts), ("msg_dead", 5));
    // Queued again, a known id is left as it is.
    queue.commit(queued(with_id("msg_pending"))).await.unwrap();
    queue.commit(queued(with_id("msg_dead"))).await.unwrap();
    assert_eq!(queue.backlog().await.unwrap(), 1);
    let room = Room {
        default: 8,
        ..Room::default()
    };
    let claim = queue.claim(now_ms(), 10, room.clone()).await.unwrap();
    assert_eq!(claim.claimed.len(), 1, "the old run's claim is released");
    let taken = &claim.claimed[0];
    assert_eq!(taken.delivery.id, "msg_pending");
    assert_eq!(taken.attempts, 1);
    assert!(taken.delivery.queued.signed);
    assert_eq!(taken.delivery.queued.allow.as_deref(), Some("127.0.0.1/32"));
    assert_eq!(taken.delivery.headers["x-one"], "1");
    let delivered = answered(Finish::Delivered, 200);
    queue
        .finish("msg_pending".into(), 2, Finish::Delivered, delivered)
        .await
        .unwrap();
    assert_eq!(queue.backlog().await.unwrap(), 0);
    // Its key is still known.
    let again = Batch {
        key: Some("k1".into()),
        ..queued(delivery(3))
    };
    assert_eq!(queue.commit(again).await.unwrap(), Committed::Duplicate);
}

/// The engine keeps the ids of its rows in memory; an operator's command
/// (another connection) that deletes rows must not leave it believing they
/// are still there, or the same delivery queued again would be dropped.
#[tokio::test]
async fn an_id_purged_by_an_operator_can_be_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open(Some(dir.path()), false, History::default()).unwrap();
    queue.commit(queued(with_id("msg_x"))).await.unwrap();
    let room = Room {
        default: 8,
        ..Room::default()
    };
    let claim = queue.claim(now_ms(), 10, room.clone()).await.unwrap();
    assert_eq!(claim.claimed.len(), 1);
    let dead = answered(Finish::Dead, 410);
    queue
        .finish("msg_x".into(), 1, Finish::Dead, dead)
        .await
        .unwrap();
    let admin = DeliveryAdmin::open(dir.path()).unwrap();
    assert_eq!(
        admin.purge_dead(std::time::Duration::ZERO).await.unwrap(),
        1
    );
    queue.commit(queued(with_id("msg_x"))).await.unwrap();
    assert_eq!(queue.backlog().await.unwrap(), 1, "queued again");
    let claim = queue.claim(now_ms(), 10, room).await.unwrap();
    assert_eq!(claim.claimed.len(), 1);
    assert_eq!(claim.claimed[0].delivery.id, "msg_x");
}

/// Records older than the archive's days go at the next write, whatever
/// room is left; a read from a time skips the older ones.
#[tokio::test]
async fn the_archive_drops_what_is_older_than_its_days() {
    let queue = SqliteQueue::open(None, false, History::default()).unwrap();
    let day = 86_400_000;
    let bounds = ArchiveBounds {
        max_age: std::time::Duration::from_millis(2 * day),
        max_bytes: 1 << 30,
    };
    let now = now_ms();
    let at = |at_ms: u64, name: &str| Archived {
        seq: 0,
        at_ms,
        record: name.as_bytes().to_vec(),
    };
    let records = vec![
        at(now - 3 * day, "3 days"),
        at(now - day, "1 day"),
        at(now, "now"),
    ];
    queue.archive(records, bounds).await.unwrap();
    let kept: Vec<_> = queue.archived(0, 0, 10).await.unwrap();
    let names: Vec<_> = kept
        .iter()
        .map(|a| std::str::from_utf8(&a.record).unwrap())
        .collect();
    assert_eq!(names, ["1 day", "now"]);
    let recent = queue.archived(now - 60_000, 0, 10).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].record, b"now");
    assert_eq!(recent[0].at_ms, now);
}

/// Schema 3, as builds before schema 4 wrote it: `dead` for a row's state,
/// and no history.
const SCHEMA_3: &str = "
CREATE TABLE events (ticket INTEGER PRIMARY KEY, uid TEXT NOT NULL, hooks TEXT NOT NULL,
    payload TEXT NOT NULL, accepted_ms INTEGER NOT NULL);
CREATE TABLE deliveries (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, hook TEXT NOT NULL,
    receiver TEXT NOT NULL, url TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL,
    signed INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0,
    claimed INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL, last_error TEXT,
    last_status INTEGER, allow TEXT);
CREATE INDEX deliveries_ready ON deliveries (receiver, next_ms) WHERE dead = 0 AND claimed = 0;
CREATE INDEX deliveries_dead ON deliveries (created_ms) WHERE dead = 1;
CREATE TABLE accepted (key TEXT PRIMARY KEY, at_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX accepted_at ON accepted (at_ms);
INSERT INTO deliveries (id, hook, receiver, url, headers, body, signed, dead, claimed,
    attempts, created_ms, next_ms, last_error, allow)
VALUES ('msg_pending', 'hook', 'r0.test:80', 'http://r0.test/path', '[]',
        X'7B7D', 0, 0, 42, 1, 1000, 1000, 'timed out', NULL),
       ('msg_dead', 'hook', 'r1.test:80', 'http://r1.test/path', '[]',
        X'7B7D', 0, 1, 0, 5, 900, 900, 'refused', NULL);
PRAGMA user_version = 3;
";

/// A state folder written by schema 3 keeps its pending and dead
/// deliveries as they were, and then keeps attempts and delivered ones.
#[tokio::test]
async fn an_upgrade_from_schema_3_keeps_every_delivery_and_then_their_history() {
    let (_dir, queue) = written_by(SCHEMA_3);
    assert_eq!(queue.backlog().await.unwrap(), 1);
    let dead = queue.get("msg_dead".into()).await.unwrap().unwrap();
    assert_eq!((dead.delivery.state, dead.delivery.attempts), ("dead", 5));
    let room = Room {
        default: 8,
        ..Room::default()
    };
    let claim = queue.claim(now_ms(), 10, room).await.unwrap();
    assert_eq!(claim.claimed.len(), 1, "the old run's claim is released");
    let delivered = answered(Finish::Delivered, 200);
    queue
        .finish(
            "msg_pending".into(),
            2,
            Finish::Delivered,
            delivered.clone(),
        )
        .await
        .unwrap();
    let detail = queue.get("msg_pending".into()).await.unwrap().unwrap();
    assert_eq!(detail.delivery.state, "delivered");
    assert_eq!(detail.history, [delivered]);
    assert_eq!(queue.backlog().await.unwrap(), 0);
}
