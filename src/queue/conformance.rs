//! The queue conformance suite: what every [`Queue`] backend must do, run
//! against each one. A new backend adds a [`Backend`] and one line to the
//! `backends!` list at the bottom.

use super::*;
use crate::delivery::{Delivery, QueuedUnder};
use crate::util::now_ms;

/// How the suite gets queues of one backend.
trait Backend: Send {
    /// A queue for a new engine run on this backend's store (the same store
    /// on every call), keeping what `history` says. The previous run's
    /// queue is dropped first.
    async fn open_keeping(&mut self, history: History) -> Arc<dyn Queue>;
    /// [`Backend::open_keeping`] what `[delivery]`'s defaults keep.
    async fn open(&mut self) -> Arc<dyn Queue> {
        self.open_keeping(History::default()).await
    }
    /// Whether what was committed survives the next [`Backend::open`].
    fn durable(&self) -> bool;
    /// An operator's handle on the store while an engine runs, if the
    /// backend has one.
    async fn admin(&self) -> Option<DeliveryAdmin>;
}

struct SqliteFile(tempfile::TempDir);

impl Backend for SqliteFile {
    async fn open_keeping(&mut self, history: History) -> Arc<dyn Queue> {
        SqliteQueue::open(Some(self.0.path()), false, history).expect("opens")
    }
    fn durable(&self) -> bool {
        true
    }
    async fn admin(&self) -> Option<DeliveryAdmin> {
        Some(DeliveryAdmin::open(self.0.path()).expect("opens"))
    }
}

struct SqliteMemory;

impl Backend for SqliteMemory {
    async fn open_keeping(&mut self, history: History) -> Arc<dyn Queue> {
        SqliteQueue::open(None, false, history).expect("opens")
    }
    fn durable(&self) -> bool {
        false
    }
    async fn admin(&self) -> Option<DeliveryAdmin> {
        None
    }
}

// Shared with the integration tests, where its items are public.
#[allow(unreachable_pub)]
#[path = "../../tests/support/nats.rs"]
pub(super) mod nats_server;

/// A JetStream server of its own; a dropped run hands back what it held
/// (as an engine that stops does; one that dies loses its claims after
/// `ack_wait`, which the integration tests cover).
struct Nats {
    server: nats_server::NatsServer,
    last: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Nats {
    fn start() -> Nats {
        Nats {
            server: nats_server::NatsServer::start(),
            last: None,
        }
    }

    fn config(&self) -> Config {
        Config {
            queue: crate::config::QueueConfig::Nats(crate::config::NatsConfig {
                url: self.server.url.clone(),
                ..Default::default()
            }),
            ..Config::default()
        }
    }
}

impl Backend for Nats {
    async fn open_keeping(&mut self, history: History) -> Arc<dyn Queue> {
        if let Some(mut last) = self.last.take() {
            let _ = last.wait_for(|released| *released).await;
        }
        let config = self.config();
        let crate::config::QueueConfig::Nats(nats) = &config.queue else {
            unreachable!()
        };
        let settings = QueueSettings {
            history,
            ..config.queue_settings()
        };
        let queue = NatsQueue::open(nats, &settings, None).await.expect("opens");
        self.last = Some(queue.released());
        queue
    }
    fn durable(&self) -> bool {
        true
    }
    async fn admin(&self) -> Option<DeliveryAdmin> {
        Some(
            DeliveryAdmin::connect(&self.config())
                .await
                .expect("connects"),
        )
    }
}

fn delivery(id: &str, receiver: &str) -> Delivery {
    Delivery::new(
        id.to_owned(),
        "hook".into(),
        &format!("http://{receiver}/path"),
        vec![("x-one".into(), "1".into())],
        b"{\"n\":1}".to_vec(),
        QueuedUnder {
            signed: true,
            allow: Some("127.0.0.1/32".into()),
        },
    )
    .unwrap()
}

fn room(default: usize) -> Room {
    Room {
        default,
        ..Room::default()
    }
}

fn queued(deliveries: Vec<Delivery>) -> Batch {
    Batch {
        queued: deliveries,
        ..Batch::default()
    }
}

/// An attempt's record: answered `status` with `body`, or failed with
/// `error` before an answer.
fn attempt(how: Finish, status: Option<u16>, body: &str) -> AttemptRecord {
    let failed = how != Finish::Delivered;
    AttemptRecord {
        at_ms: now_ms(),
        duration_ms: 3,
        outcome: how.outcome(),
        status,
        error: failed.then(|| match status {
            Some(s) => format!("receiver answered {s}"),
            None => "could not connect".to_owned(),
        }),
        headers: status
            .map(|_| vec![("content-type".to_owned(), "text/plain".to_owned())])
            .unwrap_or_default(),
        body: status.map(|_| body.to_owned()),
        body_truncated: false,
        engine: "test/1".into(),
    }
}

/// Records `how` for `id`, with an attempt answered `status`.
async fn finish(queue: &dyn Queue, id: &str, attempts: u32, how: Finish, status: Option<u16>) {
    let record = attempt(how, status, "");
    queue
        .finish(id.to_owned(), attempts, how, record)
        .await
        .unwrap();
}

/// Queues `id` to `a.test:80`, and claims it.
async fn commit_and_claim(queue: &dyn Queue, id: &str) {
    let d = delivery(id, "a.test:80");
    queue.commit(queued(vec![d])).await.unwrap();
    assert_eq!(claim_ids(queue, 1, room(1)).await, [id]);
}

/// Claims until `n` are claimed (JetStream may hand out what was just
/// published a moment later), within 30 s.
async fn claim_at_least(queue: &dyn Queue, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut ids = Vec::new();
    while ids.len() < n {
        assert!(std::time::Instant::now() < deadline, "only {ids:?} claimed");
        ids.extend(claim_ids(queue, 10, room(10)).await);
    }
    ids
}

/// The first 10 deliveries in `state`.
async fn listed(queue: &dyn Queue, state: DeliveryState) -> Vec<DeliveryInfo> {
    queue.list(DeliveryQuery::new(state, 10)).await.unwrap()
}

async fn claim_ids(queue: &dyn Queue, limit: usize, room: Room) -> Vec<String> {
    let claim = queue.claim(now_ms(), limit, room).await.unwrap();
    claim.claimed.into_iter().map(|c| c.delivery.id).collect()
}

async fn commit_then_claim_round_trips_a_delivery(mut b: impl Backend) {
    let queue = b.open().await;
    let d = delivery("msg_a", "a.test:80");
    let written = queue.commit(queued(vec![d.clone()])).await.unwrap();
    assert_eq!(written, Committed::Done { claimed: vec![] });
    let claim = queue.claim(now_ms(), 10, room(8)).await.unwrap();
    assert_eq!(claim.claimed.len(), 1);
    let got = &claim.claimed[0];
    assert_eq!(got.attempts, 0);
    assert_eq!(got.delivery.id, d.id);
    assert_eq!(got.delivery.url, d.url);
    assert_eq!(got.delivery.headers, d.headers);
    assert_eq!(got.delivery.body, d.body);
    assert_eq!(got.delivery.queued, d.queued, "the policy travels with it");
    // Claimed: not handed out again.
    assert!(claim_ids(&*queue, 10, room(8)).await.is_empty());
    finish(&*queue, &d.id, 1, Finish::Delivered, Some(200)).await;
    assert_eq!(queue.backlog().await.unwrap(), 0);
}

/// Every header a hook set comes back as it was queued: a value with
/// bytes beyond ASCII (HTTP allows them), and a name given twice.
async fn headers_come_back_as_queued(mut b: impl Backend) {
    let queue = b.open().await;
    let d = Delivery::new(
        "msg_h".to_owned(),
        "hook".into(),
        "http://h.test/path",
        vec![
            ("x-city".into(), "Besançon".into()),
            ("x-tag".into(), "one".into()),
            ("x-tag".into(), "two".into()),
        ],
        b"{}".to_vec(),
        QueuedUnder {
            signed: false,
            allow: None,
        },
    )
    .unwrap();
    queue.commit(queued(vec![d.clone()])).await.unwrap();
    let claim = queue.claim(now_ms(), 10, room(8)).await.unwrap();
    assert_eq!(claim.claimed.len(), 1);
    assert_eq!(claim.claimed[0].delivery.headers, d.headers);
}

async fn a_delivery_id_is_queued_once(mut b: impl Backend) {
    let queue = b.open().await;
    let d = delivery("msg_a", "a.test:80");
    queue.commit(queued(vec![d.clone()])).await.unwrap();
    queue.commit(queued(vec![d.clone()])).await.unwrap();
    assert_eq!(queue.backlog().await.unwrap(), 1);
    // Claimed by a commit, an id already queued is not taken from its row.
    let again = Batch {
        claimed: vec![d.clone(), delivery("msg_b", "a.test:80")],
        ..Batch::default()
    };
    let written = queue.commit(again).await.unwrap();
    assert_eq!(
        written,
        Committed::Done {
            claimed: vec!["msg_b".into()]
        }
    );
    // Recording an attempt needs the claim: the unclaimed row is left alone.
    finish(&*queue, &d.id, 1, Finish::Delivered, Some(200)).await;
    assert_eq!(claim_ids(&*queue, 10, room(8)).await, ["msg_a"]);
}

async fn a_key_is_accepted_once_until_forgotten(mut b: impl Backend) {
    let queue = b.open().await;
    let batch = |id: &str| Batch {
        key: Some("vm.start\nc1\npost".into()),
        queued: vec![delivery(id, "a.test:80")],
        ..Batch::default()
    };
    let written = queue.commit(batch("msg_1")).await.unwrap();
    assert!(matches!(written, Committed::Done { .. }));
    assert_eq!(
        queue.commit(batch("msg_2")).await.unwrap(),
        Committed::Duplicate
    );
    let journaled = Journaled {
        ticket: 0,
        uid: "u".into(),
        key: Some("vm.start\nc1\npost".into()),
        hooks: vec!["hook".into()],
        payload: "{}".into(),
    };
    assert_eq!(
        queue.journal(journaled.clone()).await.unwrap(),
        None,
        "journal sees the key too"
    );
    assert_eq!(
        queue.backlog().await.unwrap(),
        1,
        "nothing of a duplicate is written"
    );
    assert_eq!(queue.forget_keys(now_ms()).await.unwrap(), 1);
    assert!(queue.journal(journaled).await.unwrap().is_some());
}

async fn claims_respect_room_and_pauses_and_tell_when_next_is_due(mut b: impl Backend) {
    let queue = b.open().await;
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(delivery(&format!("msg_a{i}"), "a.test:80"));
        batch.push(delivery(&format!("msg_b{i}"), "b.test:80"));
        batch.push(delivery(&format!("msg_c{i}"), "c.test:80"));
    }
    queue.commit(queued(batch)).await.unwrap();
    let mut r = room(2);
    r.per_receiver.insert("b.test:80".into(), 0); // full
    r.paused.insert("c.test:80".into(), now_ms() + 60_000);
    let ids = claim_ids(&*queue, 100, r.clone()).await;
    assert_eq!(ids, ["msg_a0", "msg_a1"], "oldest first, within room");
    // The limit caps the total.
    let claim = queue.claim(now_ms(), 1, room(8)).await.unwrap();
    assert_eq!(claim.claimed.len(), 1);
    // Not due yet: nothing claimed, and when it is due is said.
    let later = Batch {
        queued: vec![delivery("msg_d", "d.test:80")],
        ..Batch::default()
    };
    queue.commit(later).await.unwrap();
    let mut r = room(8);
    for full in ["a.test:80", "b.test:80", "c.test:80"] {
        r.per_receiver.insert(full.into(), 0);
    }
    let early = queue.claim(now_ms() - 10_000, 10, r.clone()).await.unwrap();
    assert!(early.claimed.is_empty());
    assert!(early.next_due.is_some_and(|at| at > now_ms() - 10_000));
}

async fn finish_retry_reschedules_and_dead_letters_can_be_retried_and_purged(mut b: impl Backend) {
    let queue = b.open().await;
    commit_and_claim(&*queue, "msg_a").await;
    let at_ms = now_ms() + 60_000;
    finish(&*queue, "msg_a", 1, Finish::Retry { at_ms }, Some(503)).await;
    assert!(
        claim_ids(&*queue, 1, room(1)).await.is_empty(),
        "not due yet"
    );
    let failed = listed(&*queue, DeliveryState::Failed).await;
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].attempts, failed[0].last_status), (1, Some(503)));
    assert_eq!(failed[0].next_ms, Some(at_ms));
    let claim = queue.claim(at_ms, 1, room(1)).await.unwrap();
    assert_eq!(claim.claimed[0].attempts, 1);
    finish(&*queue, "msg_a", 2, Finish::Dead, Some(410)).await;
    assert_eq!(queue.backlog().await.unwrap(), 0);
    let dead = listed(&*queue, DeliveryState::Dead).await;
    assert_eq!((dead[0].state, dead[0].attempts), ("dead", 2));
    assert_eq!(
        queue
            .retry(Replay::One("msg_none".into()), false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(queue.retry(Replay::all_dead(), false).await.unwrap(), 1);
    let claim = queue.claim(now_ms(), 1, room(1)).await.unwrap();
    assert_eq!(claim.claimed[0].attempts, 0, "a fresh schedule");
    finish(&*queue, "msg_a", 1, Finish::Dead, None).await;
    assert_eq!(
        queue.purge_dead(now_ms() - 60_000).await.unwrap(),
        0,
        "too recent"
    );
    assert_eq!(queue.purge_dead(now_ms()).await.unwrap(), 1);
    assert!(listed(&*queue, DeliveryState::Dead).await.is_empty());
}

/// Answered 500, then 429 with a body, then 200: three attempts, each
/// with its status and body, and the delivery kept as delivered; the
/// credentials a hook set are never shown.
async fn attempts_are_kept_with_what_the_receiver_answered(mut b: impl Backend) {
    let queue = b.open().await;
    let mut d = delivery("msg_a", "a.test:80");
    d.headers
        .insert("authorization", "Bearer s3cr3t-t0ken".parse().unwrap());
    queue.commit(queued(vec![d])).await.unwrap();
    assert!(queue.get("msg_none".into()).await.unwrap().is_none());
    let pending = queue.get("msg_a".into()).await.unwrap().expect("pending");
    assert_eq!(pending.delivery.state, "pending");
    assert!(pending.history.is_empty());
    let answers = [
        (Finish::Retry { at_ms: now_ms() }, 500, ""),
        (Finish::Retry { at_ms: now_ms() }, 429, "slow down, please"),
        (Finish::Delivered, 200, "{\"ok\":true}"),
    ];
    for (n, (how, status, body)) in answers.into_iter().enumerate() {
        assert_eq!(claim_ids(&*queue, 1, room(1)).await, ["msg_a"], "try {n}");
        let record = attempt(how, Some(status), body);
        queue
            .finish("msg_a".into(), n as u32 + 1, how, record)
            .await
            .unwrap();
    }
    assert_eq!(queue.backlog().await.unwrap(), 0, "delivered: not waiting");
    let detail = queue.get("msg_a".into()).await.unwrap().expect("kept");
    assert_eq!(detail.delivery.state, "delivered");
    assert_eq!(detail.delivery.attempts, 3);
    assert_eq!(detail.delivery.last_status, Some(200));
    assert!(detail.delivery.delivered_ms.is_some());
    let seen: Vec<_> = detail
        .history
        .iter()
        .map(|a| (a.outcome, a.status, a.body.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (AttemptOutcome::Retry, Some(500), Some("")),
            (AttemptOutcome::Retry, Some(429), Some("slow down, please")),
            (AttemptOutcome::Delivered, Some(200), Some("{\"ok\":true}")),
        ]
    );
    assert_eq!(
        detail.history[1].error.as_deref(),
        Some("receiver answered 429")
    );
    assert!(
        detail
            .headers
            .contains(&("authorization".into(), "[redacted]".into()))
    );
    assert!(detail.headers.contains(&("x-one".into(), "1".into())));
    let shown = serde_json::to_string(&detail).unwrap();
    assert!(!shown.contains("s3cr3t"), "{shown}");
    let delivered = listed(&*queue, DeliveryState::Delivered).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].id, "msg_a");
    assert!(listed(&*queue, DeliveryState::Pending).await.is_empty());
}

/// Past `history.attempts`, the oldest attempts are dropped.
async fn only_the_latest_attempts_are_kept(mut b: impl Backend) {
    let keep = 3;
    let history = History {
        attempts: keep,
        ..History::default()
    };
    let queue = b.open_keeping(history).await;
    queue
        .commit(queued(vec![delivery("msg_a", "a.test:80")]))
        .await
        .unwrap();
    for n in 1..=5u16 {
        assert_eq!(claim_ids(&*queue, 1, room(1)).await, ["msg_a"]);
        let how = Finish::Retry { at_ms: now_ms() };
        finish(&*queue, "msg_a", u32::from(n), how, Some(500 + n)).await;
    }
    let detail = queue.get("msg_a".into()).await.unwrap().unwrap();
    let statuses: Vec<_> = detail.history.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(504), Some(505)]);
    assert_eq!(detail.delivery.attempts, 5);
}

/// Delivered deliveries are kept until purged past their retention, and
/// not at all with history off.
async fn delivered_history_is_purged_after_its_retention(mut b: impl Backend) {
    let queue = b.open().await;
    commit_and_claim(&*queue, "msg_a").await;
    finish(&*queue, "msg_a", 1, Finish::Delivered, Some(204)).await;
    assert_eq!(
        queue.purge_delivered(now_ms() - 60_000).await.unwrap(),
        0,
        "too recent"
    );
    assert!(queue.get("msg_a".into()).await.unwrap().is_some());
    assert_eq!(queue.purge_delivered(now_ms()).await.unwrap(), 1);
    assert!(queue.get("msg_a".into()).await.unwrap().is_none());
    assert!(listed(&*queue, DeliveryState::Delivered).await.is_empty());
    drop(queue);
    let off = History {
        attempts: 0,
        delivered: std::time::Duration::ZERO,
    };
    let queue = b.open_keeping(off).await;
    let ds = vec![
        delivery("msg_b", "a.test:80"),
        delivery("msg_c", "a.test:80"),
    ];
    queue.commit(queued(ds)).await.unwrap();
    let mut ids = claim_ids(&*queue, 2, room(2)).await;
    ids.sort();
    assert_eq!(ids, ["msg_b", "msg_c"]);
    finish(&*queue, "msg_b", 1, Finish::Delivered, Some(200)).await;
    let at_ms = now_ms() + 60_000;
    finish(&*queue, "msg_c", 1, Finish::Retry { at_ms }, Some(503)).await;
    assert!(queue.get("msg_b".into()).await.unwrap().is_none());
    let retried = queue.get("msg_c".into()).await.unwrap().unwrap();
    assert!(retried.history.is_empty(), "no attempt kept");
    assert_eq!(retried.delivery.last_status, Some(503));
}

/// The archive gives back what it was given, oldest first, a page at a
/// time, from a point in time; past its size, the oldest records go first.
async fn the_archive_keeps_its_newest_records_within_its_size(mut b: impl Backend) {
    let queue = b.open().await;
    assert!(
        queue.archived(0, 0, 10).await.unwrap().is_empty(),
        "none yet"
    );
    let bounds = ArchiveBounds {
        max_age: std::time::Duration::from_secs(86_400),
        max_bytes: 100_000,
    };
    // 200 records of 1,000 bytes, numbered: twice what the archive keeps.
    let record = |i: usize| format!("{i:05}{}", "x".repeat(995)).into_bytes();
    for batch in 0..20 {
        let records = (0..10)
            .map(|j| Archived {
                seq: 0,
                at_ms: now_ms(),
                record: record(batch * 10 + j),
            })
            .collect();
        queue.archive(records, bounds).await.unwrap();
    }
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let page = queue.archived(0, after, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    let kept: Vec<usize> = all
        .iter()
        .map(|a| {
            std::str::from_utf8(&a.record[..5])
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(kept.last(), Some(&199), "the newest is kept");
    assert!(
        kept.windows(2).all(|w| w[1] == w[0] + 1),
        "the oldest went first, in order: {kept:?}"
    );
    assert!(
        (80..=100).contains(&kept.len()),
        "about 100 KB kept: {}",
        kept.len()
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let later = now_ms() + 60_000;
    assert!(
        queue.archived(later, 0, 10).await.unwrap().is_empty(),
        "nothing archived after a time to come"
    );
}

/// A replay of a time range for one receiver requeues exactly those
/// deliveries, under their ids; a dry run counts them first; one by id
/// takes a delivered delivery or a pending one that failed.
async fn a_replay_by_range_requeues_exactly_those_under_their_ids(mut b: impl Backend) {
    let queue = b.open().await;
    let (a, b) = ("a.test:80", "b.test:80");
    let old = vec![delivery("msg_o1", a), delivery("msg_o2", b)];
    queue.commit(queued(old)).await.unwrap();
    // The clock moves on a millisecond: the range below tells them apart.
    let queued_old = listed(&*queue, DeliveryState::Pending).await[0].created_ms;
    while now_ms() <= queued_old {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let mid = now_ms();
    let new = vec![
        delivery("msg_n1", a),
        delivery("msg_n2", b),
        delivery("msg_n3", a),
    ];
    queue.commit(queued(new)).await.unwrap();
    let mut ids = claim_at_least(&*queue, 5).await;
    ids.sort();
    assert_eq!(ids, ["msg_n1", "msg_n2", "msg_n3", "msg_o1", "msg_o2"]);
    for id in ["msg_o1", "msg_o2", "msg_n1", "msg_n2"] {
        finish(&*queue, id, 1, Finish::Dead, Some(410)).await;
    }
    finish(&*queue, "msg_n3", 1, Finish::Delivered, Some(200)).await;

    let recent_dead_to_a = Replay::Matching(DeliveryFilter {
        receiver: Some(a.into()),
        from_ms: Some(mid),
        ..DeliveryFilter::new(DeliveryState::Dead)
    });
    assert_eq!(
        queue.retry(recent_dead_to_a.clone(), true).await.unwrap(),
        1
    );
    let older_dead_to_b = Replay::Matching(DeliveryFilter {
        receiver: Some(b.into()),
        to_ms: Some(mid),
        ..DeliveryFilter::new(DeliveryState::Dead)
    });
    assert_eq!(queue.retry(older_dead_to_b, true).await.unwrap(), 1);
    // `from_ms` takes its own millisecond, `to_ms` does not.
    let at_old = |from_ms, to_ms| {
        Replay::Matching(DeliveryFilter {
            from_ms,
            to_ms,
            ..DeliveryFilter::new(DeliveryState::Dead)
        })
    };
    let from_old = at_old(Some(queued_old), Some(queued_old + 1));
    assert_eq!(queue.retry(from_old, true).await.unwrap(), 2);
    let until_old = at_old(None, Some(queued_old));
    assert_eq!(queue.retry(until_old, true).await.unwrap(), 0);
    assert_eq!(
        listed(&*queue, DeliveryState::Dead).await.len(),
        4,
        "a dry run changes nothing"
    );

    assert_eq!(queue.retry(recent_dead_to_a, false).await.unwrap(), 1);
    let claim = queue.claim(now_ms(), 10, room(10)).await.unwrap();
    assert_eq!(claim.claimed.len(), 1);
    assert_eq!(claim.claimed[0].delivery.id, "msg_n1", "under its id");
    assert_eq!(claim.claimed[0].attempts, 0, "a fresh schedule");
    let mut dead: Vec<_> = listed(&*queue, DeliveryState::Dead)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    dead.sort();
    assert_eq!(dead, ["msg_n2", "msg_o1", "msg_o2"]);

    // By id: a delivered one, then a pending one that failed, each sent
    // again at once with its history kept.
    assert_eq!(
        queue
            .retry(Replay::One("msg_n3".into()), false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(claim_ids(&*queue, 10, room(10)).await, ["msg_n3"]);
    let replayed = queue.get("msg_n3".into()).await.unwrap().unwrap();
    assert_eq!(replayed.delivery.state, "pending");
    assert_eq!(replayed.history.len(), 1, "its history stays");
    finish(&*queue, "msg_n3", 1, Finish::Delivered, Some(200)).await;
    let again = queue.get("msg_n3".into()).await.unwrap().unwrap();
    assert_eq!(
        again.delivery.state, "delivered",
        "recorded: in the ids again"
    );
    assert_eq!(again.history.len(), 2);

    let later = now_ms() + 3_600_000;
    let retry = Finish::Retry { at_ms: later };
    finish(&*queue, "msg_n1", 1, retry, Some(503)).await;
    assert!(
        claim_ids(&*queue, 10, room(10)).await.is_empty(),
        "not due for an hour"
    );
    let failed = Replay::Matching(DeliveryFilter::new(DeliveryState::Failed));
    match queue.retry(failed, true).await {
        // NATS: any engine may hold a pending delivery; none is replayed.
        Err(QueueError::Unsupported(_)) => {
            let one = queue.retry(Replay::One("msg_n1".into()), false);
            assert_eq!(one.await.unwrap(), 0);
        }
        Ok(n) => {
            assert_eq!(n, 1);
            let one = queue.retry(Replay::One("msg_n1".into()), false);
            assert_eq!(one.await.unwrap(), 1);
            assert_eq!(
                claim_ids(&*queue, 10, room(10)).await,
                ["msg_n1"],
                "due now"
            );
            let again = queue.retry(Replay::One("msg_n1".into()), false);
            assert_eq!(again.await.unwrap(), 0, "claimed: in flight, not taken");
        }
        Err(e) => panic!("{e}"),
    }
}

async fn depth_counts_per_receiver(mut b: impl Backend) {
    let queue = b.open().await;
    let ds = vec![
        delivery("msg_1", "a.test:80"),
        delivery("msg_2", "a.test:80"),
        delivery("msg_3", "b.test:80"),
    ];
    queue.commit(queued(ds)).await.unwrap();
    let depth = queue.depth().await.unwrap();
    assert_eq!(depth["a.test:80"].pending, 2);
    assert_eq!(depth["b.test:80"].pending, 1);
    assert!(depth["a.test:80"].oldest_ms.is_some());
}

async fn lists_filter_by_hook_and_receiver_and_page(mut b: impl Backend) {
    let queue = b.open().await;
    let of = |id: &str, hook: &str, receiver: &str| {
        let mut d = delivery(id, receiver);
        d.hook = hook.into();
        d
    };
    let ds = vec![
        of("msg_1", "slack", "a.test:80"),
        of("msg_2", "cmdb", "a.test:80"),
        of("msg_3", "slack", "b.test:8080"),
        of("msg_4", "slack", "a.test:80"),
        of("msg_5", "slack", "a.test:80"),
    ];
    queue.commit(queued(ds)).await.unwrap();
    let ids = |rows: Vec<DeliveryInfo>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = listed(&*queue, DeliveryState::Pending).await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[2].receiver, "b.test:8080");
    let mut q = DeliveryQuery::new(DeliveryState::Pending, 10);
    q.filter.hook = Some("slack".into());
    q.filter.receiver = Some("a.test:80".into());
    let mut matching = ids(queue.list(q.clone()).await.unwrap());
    matching.sort();
    assert_eq!(matching, ["msg_1", "msg_4", "msg_5"]);
    // Page by page, two at a time, each after the last row of the one before.
    q.limit = 2;
    let mut pages = Vec::new();
    loop {
        let page = queue.list(q.clone()).await.unwrap();
        let Some(last) = page.last() else { break };
        q.after = Some((last.created_ms, last.id.clone()));
        pages.push(ids(page));
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    let mut paged = pages.concat();
    paged.sort();
    assert_eq!(paged, matching, "every matching row once");
    let mut none = DeliveryQuery::new(DeliveryState::Dead, 10);
    none.filter.hook = Some("slack".into());
    assert!(queue.list(none).await.unwrap().is_empty());
}

async fn a_new_run_reclaims_the_last_runs_claims_and_journal(mut b: impl Backend) {
    if !b.durable() {
        return;
    }
    let queue = b.open().await;
    let claimed = Batch {
        claimed: vec![delivery("msg_sending", "a.test:80")],
        queued: vec![delivery("msg_waiting", "a.test:80")],
        ..Batch::default()
    };
    queue.commit(claimed).await.unwrap();
    let journaled = Journaled {
        ticket: 0,
        uid: "u1".into(),
        key: None,
        hooks: vec!["a".into(), "b".into()],
        payload: "{\"x\":1}".into(),
    };
    let ticket = queue.journal(journaled.clone()).await.unwrap().unwrap();
    assert_eq!(claim_ids(&*queue, 10, room(8)).await, ["msg_waiting"]);
    drop(queue); // the engine dies with both claimed

    let queue = b.open().await;
    let mut ids = claim_ids(&*queue, 10, room(8)).await;
    ids.sort();
    assert_eq!(
        ids,
        ["msg_sending", "msg_waiting"],
        "sent again: at least once"
    );
    let unfinished = queue.unfinished().await.unwrap();
    assert_eq!(
        unfinished,
        [Journaled {
            ticket,
            ..journaled
        }]
    );
    // Its deliveries, committed with the ticket, retire it.
    let batch = Batch {
        ticket: Some(ticket),
        queued: vec![delivery("msg_late", "a.test:80")],
        ..Batch::default()
    };
    queue.commit(batch).await.unwrap();
    assert!(queue.unfinished().await.unwrap().is_empty());
}

async fn operators_never_touch_claims(mut b: impl Backend) {
    let queue = b.open().await;
    let Some(admin) = b.admin().await else { return };
    queue
        .commit(queued(vec![delivery("msg_a", "a.test:80")]))
        .await
        .unwrap();
    assert_eq!(claim_ids(&*queue, 10, room(8)).await, ["msg_a"]);
    for _ in 0..3 {
        let listed = admin
            .list(DeliveryQuery::new(DeliveryState::Pending, 10))
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        drop(b.admin().await); // another operator command opening the store
        assert_eq!(admin.retry(Replay::all_dead()).await.unwrap(), 0);
        assert_eq!(
            admin.purge_dead(std::time::Duration::ZERO).await.unwrap(),
            0
        );
    }
    assert!(
        claim_ids(&*queue, 10, room(8)).await.is_empty(),
        "still claimed by the engine run: not handed out twice"
    );
}

/// A NATS commit that fails after a delivery it sends itself was stored
/// (here, the stream refuses a larger delivery of the same batch) strands
/// nothing: its caller sends none of the batch, so that delivery is freed
/// once its lease ends and claimed like any other. (It used to stay held by
/// the run, skipped as "being sent" by its lease sweep, and never sent.)
#[tokio::test]
async fn nats_a_failed_commit_strands_no_delivery() {
    let nats = Nats::start();
    let mut config = nats.config();
    if let crate::config::QueueConfig::Nats(n) = &mut config.queue {
        n.ack_wait_ms = 300;
    }
    config.delivery.timeout_ms = 300;
    let crate::config::QueueConfig::Nats(settings) = &config.queue else {
        unreachable!()
    };
    let queue: Arc<dyn Queue> = NatsQueue::open(settings, &config.queue_settings(), None)
        .await
        .unwrap();
    let client = async_nats::connect(&nats.server.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut limited = js
        .get_stream(format!("{}_DELIVERIES", settings.prefix))
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    limited.max_message_size = 4096;
    js.update_stream(limited).await.unwrap();
    let big = Delivery::new(
        "msg_big".into(),
        "hook".into(),
        "http://a.test:80/path",
        vec![],
        vec![b'x'; 16 * 1024],
        QueuedUnder::default(),
    )
    .unwrap();
    let batch = Batch {
        claimed: vec![delivery("msg_small", "a.test:80")],
        queued: vec![big],
        ..Batch::default()
    };
    assert!(queue.commit(batch).await.is_err(), "the big one is refused");
    // Freed once its lease (600 ms) ends; found by a claim soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if claim_ids(&*queue, 10, room(8)).await == ["msg_small"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "msg_small was stored, never sent, and never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One test per (backend, check).
macro_rules! backends {
    ($($backend:ident => $make:expr;)*) => {
        $(
            mod $backend {
                use super::*;
                backends!(@checks $make;
                    commit_then_claim_round_trips_a_delivery,
                    headers_come_back_as_queued,
                    a_delivery_id_is_queued_once,
                    a_key_is_accepted_once_until_forgotten,
                    claims_respect_room_and_pauses_and_tell_when_next_is_due,
                    finish_retry_reschedules_and_dead_letters_can_be_retried_and_purged,
                    attempts_are_kept_with_what_the_receiver_answered,
                    only_the_latest_attempts_are_kept,
                    delivered_history_is_purged_after_its_retention,
                    a_replay_by_range_requeues_exactly_those_under_their_ids,
                    depth_counts_per_receiver,
                    lists_filter_by_hook_and_receiver_and_page,
                    a_new_run_reclaims_the_last_runs_claims_and_journal,
                    operators_never_touch_claims,
                    the_archive_keeps_its_newest_records_within_its_size,
                );
            }
        )*
    };
    (@checks $make:expr; $($check:ident,)*) => {
        $(
            #[tokio::test]
            async fn $check() {
                super::$check($make).await;
            }
        )*
    };
}

backends! {
    sqlite_file => SqliteFile(tempfile::tempdir().unwrap());
    sqlite_memory => SqliteMemory;
    nats => Nats::start();
}
