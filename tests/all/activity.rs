//! What operators see of the recent past: `Engine::activity` (the last
//! events and what each hook decided) and `Engine::receivers` (circuit,
//! depth, last failures), as `GET /v1/activity` and `GET /v1/receivers`
//! serve them to the console.

use crate::{Receiver, fixture, install, test_config};
use axum::http::StatusCode;
use wasmhooks::activity::Decided;
use wasmhooks::{Circuit, Engine, Phase};

const PROTECTED: &str = "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n";

#[tokio::test]
async fn activity_shows_each_accepted_event_once_with_each_hooks_decision() {
    let receiver = Receiver::with(|_, _| (StatusCode::SERVICE_UNAVAILABLE, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let forward = format!(
        "[settings]\nurl = \"{}\"\nmethods = [\"vm.start\"]\nphases = [\"post\"]\n",
        receiver.url("/down")
    );
    install(dir.path(), "forward", "forward", Some(&forward));
    install(dir.path(), "gate", "deny", Some(PROTECTED));
    let mut config = test_config(dir.path());
    // Recognise an event sent twice: the copy is not shown again.
    config.dedup_window_secs = 3600;
    config.delivery.retry_schedule_ms = vec![60_000];
    let engine = Engine::new(config).await.unwrap();

    engine.post(fixture("vm.start.post")).await.unwrap();
    engine.post(fixture("vm.start.post")).await.unwrap(); // the same event again
    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert!(!verdict.allowed);
    engine.post(fixture("vm.create.post")).await.unwrap(); // no hook wants it

    let recent = engine.activity(10);
    let seen: Vec<(&str, Phase)> = recent.iter().map(|e| (&*e.method, e.phase)).collect();
    assert_eq!(
        seen,
        [
            ("vm.create", Phase::Post),
            ("vm.delete", Phase::Pre),
            ("vm.start", Phase::Post),
        ],
        "newest first, the copy not shown"
    );
    assert!(recent[0].hooks.is_empty(), "no hook subscribed");
    let pre = &recent[1];
    assert_eq!(
        (pre.allowed, pre.denied_by.as_deref()),
        (Some(false), Some("gate"))
    );
    assert_eq!(pre.hooks[0].decision, Decided::Vetoed);
    assert!(
        pre.hooks[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("protected")
    );
    let post = &recent[2];
    assert_eq!((post.hooks.len(), post.allowed), (1, None));
    assert_eq!(
        (post.hooks[0].decision, post.hooks[0].deliveries),
        (Decided::Queued, 1)
    );
    assert!(recent[0].seq > recent[1].seq && recent[1].seq > recent[2].seq);

    // The delivery failed once: its receiver shows it, pending, closed.
    receiver.wait_for(1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let receivers = engine.receivers().await.unwrap();
        if let Some(r) = receivers
            .into_iter()
            .find(|r| !r.recent_failures.is_empty())
        {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no failure recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.receiver,
        format!("127.0.0.1:{}", receiver.addr.port())
    );
    assert_eq!(
        (status.circuit, status.pending, status.dead),
        (Circuit::Closed, 1, 0)
    );
    assert_eq!(status.failures_in_a_row, 1);
    let failure = &status.recent_failures[0];
    assert_eq!(
        (failure.hook.as_str(), failure.status, failure.dead),
        ("forward", Some(503), false)
    );
    assert!(status.oldest_pending_age_ms.is_some());
}
