//! The one delivery pipeline at its edges: callers that go away, operator
//! commands while deliveries are in flight, `wait` hooks on the common
//! path, a signing secret removed under pending deliveries, a full disk,
//! and events sent twice.

use crate::server::serve;
use crate::{
    Receiver, eventually, failing_once, failing_until_up, fixture_json, install, test_config,
};
use axum::http::StatusCode;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;
use wasmhooks::config::Config;
use wasmhooks::{DeliveryState, Engine, Event, Replay};

/// A sample event with its own call id.
pub fn event(name: &str, call_id: &str) -> Event {
    Event::from_json(&event_bytes(name, call_id)).unwrap()
}

fn event_bytes(name: &str, call_id: &str) -> Vec<u8> {
    let mut json = fixture_json(name);
    json["callId"] = call_id.into();
    serde_json::to_vec(&json).unwrap()
}

fn echo(url: &str, extra: &str) -> String {
    format!("{extra}\n[settings]\nmode = \"echo\"\nurl = \"{url}\"\n")
}

/// Installs the `misbehave` hook as `name`, echoing events to `url`.
fn install_echo(dir: &std::path::Path, name: &str, url: impl AsRef<str>, extra: &str) {
    install(dir, name, "misbehave", Some(&echo(url.as_ref(), extra)));
}

/// `webhook-id`s the receiver got, by the `x-call-id` the echo hook sets.
fn ids_by_call(got: &[crate::Received]) -> HashMap<String, HashSet<String>> {
    let mut by_call: HashMap<String, HashSet<String>> = HashMap::new();
    for r in got {
        let call = r.header("x-call-id").to_owned();
        by_call
            .entry(call)
            .or_default()
            .insert(r.header("webhook-id").to_owned());
    }
    by_call
}

/// The sum of a metric's samples whose labels contain `label`.
async fn metric(engine: &Engine, name: &str, label: &str) -> f64 {
    engine
        .metrics()
        .await
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 500 clients give up mid-request (their requests time out after a few
/// ms, so axum drops the handler at whatever await it is in), then send
/// again; half with hooks answering inline, half journaled. Before: a drop
/// while `submit` awaited the commit left the rows claimed and the
/// receiver slots taken, and a drop after the journal left the event for
/// the next start, so `drain()` never returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_mid_request_leak_no_slot_and_lose_no_event() {
    const N: usize = 250;
    for inline_ms in [20, 0] {
        let receiver = Receiver::slow(Duration::from_millis(5)).await;
        let dir = tempfile::tempdir().unwrap();
        install_echo(dir.path(), "echo", receiver.url("/r"), "");
        let mut config = test_config(dir.path());
        config.dedup_window_secs = 3600; // the retries are the same events
        config.post_inline_ms = inline_ms;
        config.fsync = true; // commits that take a while: more drops inside them
        let engine = Engine::new(config).await.unwrap();
        let base = serve(engine.clone()).await;
        let client = reqwest::Client::new();
        let send = |i: usize, timeout: Duration| {
            client
                .post(format!("{base}/v1/events"))
                .body(event_bytes("vm.start.post", &format!("gone-{i}")))
                .timeout(timeout)
                .send()
        };
        let gone = (0..N).map(|i| send(i, Duration::from_millis(1 + i as u64 % 60)));
        let dropped = futures::future::join_all(gone)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count();
        // Each client sends again and waits for the answer this time.
        for i in 0..N {
            let status = send(i, Duration::from_secs(30)).await.unwrap().status();
            assert_eq!(status, 202, "event {i}");
        }
        tokio::time::timeout(Duration::from_secs(60), engine.drain())
            .await
            .expect("drain() returns: no claimed row or journaled event is stranded");
        let by_call = ids_by_call(&receiver.received());
        assert_eq!(by_call.len(), N, "every event delivered");
        let twice: Vec<_> = by_call.iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(twice.is_empty(), "one webhook-id per event: {twice:?}");
        assert_eq!(receiver.received().len(), N, "and each sent once");
        let busy = metric(&engine, "wasmhooks_deliveries_in_flight", "receiver").await;
        assert_eq!(busy, 0.0, "every per-receiver slot is free");
        println!(
            "post_inline_ms = {inline_ms}: {dropped} of {N} clients went away before their answer"
        );
        assert!(dropped > 0, "the clients went away");
    }
}

/// `wasmhooks deliveries list` while the engine sends. Before: opening the
/// state folder reset every claim, and in-flight deliveries went out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_while_deliveries_are_in_flight_send_nothing_twice() {
    const N: usize = 500;
    // 8 at a time, 100 ms each: about 6 s to send them all.
    let receiver = Receiver::slow(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    install_echo(dir.path(), "echo", receiver.url("/r"), "");
    let config = test_config(dir.path());
    let state = config.state_dir.clone().unwrap();
    let engine = Engine::new(config).await.unwrap();
    for i in 0..N {
        engine
            .post(event("vm.start.post", &format!("listed-{i}")))
            .await
            .unwrap();
    }
    let mut lists = 0;
    while lists < 50 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
            .args(["deliveries", "--state"])
            .arg(&state)
            .args(["list", "--json", "--limit", "5"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lists += 1;
    }
    let sent_while_listing = receiver.received().len();
    engine.drain().await;
    let got = receiver.received();
    let mut seen = HashSet::new();
    let twice: Vec<_> = got
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .filter(|id| !seen.insert(id.clone()))
        .collect();
    println!("{lists} lists while {sent_while_listing} of {N} deliveries had gone out");
    assert!(
        sent_while_listing < N,
        "the lists ran while deliveries were in flight"
    );
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(seen.len(), N);
}

/// A `wait` hook's delivery that fails for good is a dead letter like any
/// other (before: it was dropped), counted in the metrics, and `retry`
/// sends it.
#[tokio::test]
async fn a_wait_hooks_failed_delivery_is_a_dead_letter_that_retry_sends() {
    let (fixed, receiver) = failing_until_up(StatusCode::BAD_REQUEST).await;
    let dir = tempfile::tempdir().unwrap();
    install_echo(dir.path(), "gate", receiver.url("/w"), "wait = true");
    let engine = Engine::new(test_config(dir.path())).await.unwrap();
    let verdict = engine.pre(event("vm.start.pre", "w1")).await.unwrap();
    assert!(verdict.allowed, "on_error defaults to allow");
    assert_eq!(verdict.failures[0].kind, "delivery");
    assert!(verdict.failures[0].message.contains("400"), "{verdict:?}");
    let dead = engine.deliveries(DeliveryState::Dead, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "kept as a dead letter");
    let receiver_label = format!("receiver=\"{}\"", receiver.addr);
    assert_eq!(
        metric(&engine, "wasmhooks_dead_letters_total", &receiver_label).await,
        1.0
    );
    assert_eq!(
        metric(
            &engine,
            "wasmhooks_delivery_failures_total",
            &receiver_label
        )
        .await,
        1.0
    );

    fixed.store(true, Ordering::SeqCst);
    assert_eq!(
        engine.retry(Replay::One(dead[0].id.clone())).await.unwrap(),
        1
    );
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].header("webhook-id"), dead[0].id);
    engine.drain().await;
    assert!(
        engine
            .deliveries(DeliveryState::Dead, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        metric(&engine, "wasmhooks_deliveries_total", &receiver_label).await,
        1.0
    );
}

/// A `wait` hook's delivery honours its receiver's open circuit (before:
/// it was sent straight away, past the breaker).
#[tokio::test]
async fn a_wait_hooks_delivery_waits_while_its_receivers_circuit_is_open() {
    let receiver = failing_once(StatusCode::SERVICE_UNAVAILABLE).await;
    let dir = tempfile::tempdir().unwrap();
    let url = receiver.url("/c");
    let toml =
        format!("wait = true\n[settings]\nmode = \"echo\"\nurl = \"{url}\"\nphases = [\"pre\"]\n");
    install(dir.path(), "gate", "misbehave", Some(&toml));
    let notify = format!("[settings]\nmode = \"echo\"\nurl = \"{url}\"\nphases = [\"post\"]\n");
    install(dir.path(), "notify", "misbehave", Some(&notify));
    let mut config = test_config(dir.path());
    config.delivery.breaker_failures = 1;
    config.delivery.breaker_cooldown_ms = 60_000;
    config.delivery.retry_schedule_ms = vec![60_000];
    config.delivery.wait_budget_ms = 300;
    let engine = Engine::new(config).await.unwrap();
    engine.post(event("vm.start.post", "c0")).await.unwrap();
    receiver.wait_for(1).await;
    eventually("the failed attempt recorded", || async {
        let failed = engine.deliveries(DeliveryState::Failed, 10).await.unwrap();
        failed.first().is_some_and(|d| d.attempts == 1)
    })
    .await;

    let verdict = engine.pre(event("vm.start.pre", "c1")).await.unwrap();
    assert!(
        verdict.failures[0].message.contains("not delivered within"),
        "{verdict:?}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing sent while the circuit is open"
    );
    let pending = engine.deliveries(DeliveryState::Pending, 10).await.unwrap();
    assert_eq!(pending.len(), 2, "both wait for the receiver");
}

/// A signed hook reloaded without its secret while its deliveries wait
/// for a retry. Before: they went out unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_queued_signed_are_never_sent_unsigned() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (up, receiver) = failing_until_up(StatusCode::SERVICE_UNAVAILABLE).await;
    let dir = tempfile::tempdir().unwrap();
    let url = receiver.url("/signed");
    let signed = echo(&url, &format!("secret = \"{SECRET}\""));
    install(dir.path(), "signed", "misbehave", Some(&signed));
    let mut config = test_config(dir.path());
    config.settle_ms = 50;
    config.delivery.retry_schedule_ms = vec![300, 300, 300, 300, 300, 300, 300, 300];
    let engine = Engine::new(config).await.unwrap();
    for i in 0..3 {
        engine
            .post(event("vm.start.post", &format!("s{i}")))
            .await
            .unwrap();
    }
    receiver.wait_for(3).await; // each tried once, 503: pending

    let mut changes = engine.hook_changes();
    let toml = dir.path().join("signed.toml");
    std::fs::write(dir.path().join(".signed.tmp"), echo(&url, "")).unwrap();
    std::fs::rename(dir.path().join(".signed.tmp"), &toml).unwrap();
    changes.changed().await.unwrap();
    up.store(true, Ordering::SeqCst);
    eventually("three dead letters", || async {
        engine
            .deliveries(DeliveryState::Dead, 10)
            .await
            .unwrap()
            .len()
            == 3
    })
    .await;
    let dead = engine.deliveries(DeliveryState::Dead, 10).await.unwrap();
    assert!(
        dead.iter().all(|d| d
            .last_error
            .as_deref()
            .unwrap()
            .contains("never sent unsigned")),
        "{dead:?}"
    );
    let verify = |got: &[crate::Received]| {
        for r in got {
            standardwebhooks::Webhook::new(SECRET)
                .unwrap()
                .verify(&r.body, &r.headers)
                .unwrap_or_else(|e| panic!("a delivery went out unsigned: {e:?}"));
        }
    };
    verify(&receiver.received());

    // The secret back: retried, they go out signed.
    std::fs::write(dir.path().join(".signed.tmp"), &signed).unwrap();
    std::fs::rename(dir.path().join(".signed.tmp"), &toml).unwrap();
    changes.changed().await.unwrap();
    assert_eq!(engine.retry(Replay::all_dead()).await.unwrap(), 3);
    engine.drain().await;
    let got = receiver.received();
    verify(&got);
    let delivered: HashSet<_> = got[3..].iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(delivered.len(), 3);
}

/// The same post event sent twice (an orchestrator retrying after a
/// timeout) yields one set of deliveries; a pre event sent twice gets the
/// first verdict and one set of deliveries too.
#[tokio::test]
async fn an_event_sent_twice_is_delivered_once() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install_echo(dir.path(), "echo", receiver.url("/twice"), "");
    let mut config = test_config(dir.path());
    config.dedup_window_secs = 3600;
    config.post_inline_ms = 0; // journaled: the slower path
    let engine = Engine::new(config).await.unwrap();
    let base = serve(engine.clone()).await;
    let client = reqwest::Client::new();
    for name in ["vm.start.post", "vm.start.pre"] {
        for _ in 0..2 {
            let response = client
                .post(format!("{base}/v1/events"))
                .body(event_bytes(name, "twice-1"))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
    }
    // Another call id is another event.
    engine
        .post(event("vm.start.post", "twice-2"))
        .await
        .unwrap();
    engine.drain().await;
    let got = receiver.received();
    assert_eq!(got.len(), 3, "post and pre of twice-1, post of twice-2");
    let ids: HashSet<_> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 3);
}

/// A full disk (a small tmpfs under the state folder, filled up): new
/// events get 503; what was journaled before is delivered once space
/// returns, without a restart; a pre event's verdict does not wait for its
/// deliveries, which go out once space returns. Before: the
/// journaled events waited for a restart and the pre event's deliveries
/// were dropped. Needs root (to mount the tmpfs), as CI has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_events_and_loses_none_it_accepted() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), 8);
    let url = receiver.url("/full");
    // Slower than the inline window, so post events are journaled first;
    // 3 s, so the disk surely fills while they run (at 400 ms, a loaded CI
    // machine once let the first finish and send before the fill).
    let slow = format!(
        "deadline_ms = 10000\n[settings]\nmode = \"echo\"\nurl = \"{url}\"\ndelay_ms = 3000\nphases = [\"post\"]\n"
    );
    install(&hooks, "slow", "misbehave", Some(&slow));
    let pre = format!("[settings]\nmode = \"echo\"\nurl = \"{url}\"\nphases = [\"pre\"]\n");
    install(&hooks, "notify", "misbehave", Some(&pre));
    let config = Config {
        state_dir: Some(disk.path.join("state")),
        ..test_config(&hooks)
    };
    let engine = Engine::new(config).await.unwrap();
    let base = serve(engine.clone()).await;
    let client = reqwest::Client::new();
    // Big events, so each write needs new room in the database's log.
    let big = |name: &str, call: &str| {
        let mut json = fixture_json(name);
        json["callId"] = call.into();
        json["params"]["padding"] = "x".repeat(256 * 1024).into();
        serde_json::to_vec(&json).unwrap()
    };
    const JOURNALED: usize = 4;
    for i in 0..JOURNALED {
        let response = client
            .post(format!("{base}/v1/events"))
            .body(big("vm.start.post", &format!("full-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "accepted before the disk fills");
    }
    disk.fill(); // while the hooks still run

    let refused = client
        .post(format!("{base}/v1/events"))
        .body(big("vm.start.post", "full-late"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503, "nothing can be committed");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("state database"),
        "{body}"
    );
    let verdict = crate::json_of(
        client
            .post(format!("{base}/v1/events"))
            .body(big("vm.start.pre", "full-pre")),
    )
    .await;
    assert_eq!(verdict["allowed"], true, "{verdict}");
    assert!(
        verdict.get("failures").is_none(),
        "the verdict does not wait for the notifications' commit: {verdict}"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing committed, nothing sent"
    );

    disk.free();
    // The failed commits are retried: no restart.
    tokio::time::timeout(Duration::from_secs(60), engine.drain())
        .await
        .expect("drain() returns: the journaled events' deliveries are committed");
    let by_call = ids_by_call(&receiver.received());
    for i in 0..JOURNALED {
        assert!(
            by_call.contains_key(&format!("full-{i}")),
            "full-{i} delivered"
        );
    }
    assert!(
        by_call.contains_key("full-pre"),
        "the pre event's delivery went out later"
    );
    assert!(
        !by_call.contains_key("full-late"),
        "the refused one was not accepted"
    );
    drop(engine);
}

/// A pre event's verdict does not wait for the commit of its hooks'
/// non-`wait` deliveries: with the state database locked by another
/// connection's transaction, the verdict comes back at once, and the delivery
/// goes out once the lock is released. Before, the verdict waited for the
/// commit (here, the database's 10 s busy timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_verdict_does_not_wait_for_its_notifications_commit() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install_echo(dir.path(), "notify", receiver.url("/n"), "");
    let config = test_config(dir.path());
    let db = config.state_dir.clone().unwrap().join("wasmhooks.db");
    let engine = Engine::new(config).await.unwrap();
    // Everything below the engine's commit is blocked.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let verdict = tokio::time::timeout(
        Duration::from_secs(5),
        engine.pre(event("vm.start.pre", "notify-1")),
    )
    .await
    .expect("the verdict does not wait for the commit")
    .unwrap();
    assert!(
        verdict.allowed && verdict.failures.is_empty(),
        "{verdict:?}"
    );
    assert!(receiver.received().is_empty(), "not committed, not sent");
    lock.execute_batch("COMMIT").unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("x-call-id"), "notify-1");
    engine.drain().await;
}

/// A pre caller that goes away while its verdict waits (here for a `wait`
/// hook's delivery) changes nothing: the event's work, which runs in the
/// caller's task, moves to a task of its own. The other hook's notification
/// is sent, and the same event sent again gets the first copy's verdict
/// rather than a second set of deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_caller_that_goes_away_midway_loses_nothing() {
    let gate = Receiver::stalled().await;
    let notified = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install_echo(dir.path(), "gated", gate.url("/w"), "wait = true");
    install_echo(dir.path(), "notify", notified.url("/n"), "");
    let mut config = test_config(dir.path());
    config.dedup_window_secs = 3600;
    let engine = Engine::new(config).await.unwrap();
    let mut first = Box::pin(engine.pre(event("vm.start.pre", "gone-pre")));
    // The caller waits until the gated delivery is in flight, then goes away.
    tokio::select! {
        verdict = &mut first => panic!("the verdict waits for the gated delivery: {verdict:?}"),
        _ = gate.wait_for(1) => {}
    }
    drop(first);
    gate.open();
    let again = engine
        .pre(event("vm.start.pre", "gone-pre"))
        .await
        .expect("the first copy's verdict");
    assert!(again.allowed && again.failures.is_empty(), "{again:?}");
    let got = notified.wait_for(1).await;
    assert_eq!(got[0].header("x-call-id"), "gone-pre");
    engine.drain().await;
    assert_eq!(gate.received().len(), 1, "the gated delivery, once");
    assert_eq!(notified.received().len(), 1, "the notification, once");
}

/// A tmpfs of a few MiB, unmounted when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &std::path::Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "this test mounts a tmpfs to fill a disk, which needs root (CI runs as root)"
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    fn filler(&self) -> std::path::PathBuf {
        self.path.join("filler")
    }

    /// Writes a file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
