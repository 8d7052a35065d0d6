//! Delivery behaviour against a real receiver: retries, permanent failures,
//! and `wait` hooks.

use crate::{Receiver, fixture, one_hook};
use axum::http::StatusCode;

fn echo(receiver: &Receiver, extra: &str) -> String {
    format!(
        "{extra}\n[settings]\nmode = \"echo\"\nurl = \"{}\"\nmark = \"m\"\n",
        receiver.url("/hook")
    )
}

#[tokio::test]
async fn retries_5xx_then_delivers_with_the_same_id() {
    let receiver = Receiver::with(|_, n| {
        if n < 2 {
            (StatusCode::SERVICE_UNAVAILABLE, vec![])
        } else {
            (StatusCode::OK, vec![])
        }
    })
    .await;
    let (_dir, engine) = one_hook("echo", "misbehave", &echo(&receiver, "")).await;
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(3).await;
    engine.drain().await;
    assert_eq!(receiver.received().len(), 3);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
    assert_eq!(engine.pending_deliveries(), 0);
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let receiver = Receiver::with(|_, n| {
        if n == 0 {
            (
                StatusCode::TOO_MANY_REQUESTS,
                vec![("retry-after", "1".into())],
            )
        } else {
            (StatusCode::OK, vec![])
        }
    })
    .await;
    let (_dir, engine) = one_hook("echo", "misbehave", &echo(&receiver, "")).await;
    let start = std::time::Instant::now();
    engine.post(fixture("vm.start.post")).await.unwrap();
    receiver.wait_for(2).await;
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(1),
        "waited for Retry-After, not the 10 ms schedule"
    );
}

#[tokio::test]
async fn gone_and_other_4xx_are_not_retried() {
    for status in [
        StatusCode::GONE,
        StatusCode::BAD_REQUEST,
        StatusCode::MOVED_PERMANENTLY,
    ] {
        let receiver =
            Receiver::with(move |_, _| (status, vec![("location", "http://127.0.0.1:9/".into())]))
                .await;
        let (_dir, engine) = one_hook("echo", "misbehave", &echo(&receiver, "")).await;
        engine.post(fixture("vm.start.post")).await.unwrap();
        receiver.wait_for(1).await;
        engine.drain().await;
        assert_eq!(receiver.received().len(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retried_until_the_schedule_is_spent() {
    // Bind then drop a listener: a loopback port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "wait = true\n[settings]\nmode = \"echo\"\nurl = \"http://127.0.0.1:{port}/down\"\n"
    );
    let (_dir, engine) = one_hook("echo", "misbehave", &toml).await;
    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(verdict.allowed, "on_error defaults to allow");
    let message = &verdict.failures[0].message;
    assert!(
        message.contains("gave up after 4 attempts") && message.contains("could not connect"),
        "{message}"
    );
}

#[tokio::test]
async fn a_wait_hook_delivers_before_the_verdict_returns() {
    let receiver = Receiver::start().await;
    let (_dir, engine) = one_hook("echo", "misbehave", &echo(&receiver, "wait = true")).await;
    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(verdict.allowed);
    assert_eq!(receiver.received().len(), 1, "delivered before the verdict");
}

#[tokio::test]
async fn a_wait_hook_whose_delivery_fails_applies_on_error() {
    let receiver = Receiver::with(|_, _| (StatusCode::GONE, vec![])).await;
    let (_dir, engine) = one_hook(
        "gate",
        "misbehave",
        &echo(&receiver, "wait = true\non_error = \"deny\""),
    )
    .await;
    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(!verdict.allowed);
    assert_eq!(verdict.failures[0].kind, "delivery");
    assert!(verdict.reason.unwrap().contains("410"));
}

#[tokio::test]
async fn a_slow_receiver_does_not_delay_another() {
    let slow = Receiver::stalled().await;
    let fast = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    crate::install(dir.path(), "slow", "misbehave", Some(&echo(&slow, "")));
    crate::install(dir.path(), "fast", "misbehave", Some(&echo(&fast, "")));
    let mut config = crate::test_config(dir.path());
    config.delivery.concurrency = 8;
    config.delivery.per_receiver_concurrency = 4;
    let engine = wasmhooks::Engine::new(config).await.unwrap();

    // More deliveries to the stalled receiver than there are slots in all.
    let events = 20;
    for _ in 0..events {
        engine.post(fixture("vm.start.post")).await.unwrap();
    }
    fast.wait_for(events).await;
    assert_eq!(
        slow.received().len(),
        4,
        "the stalled receiver holds only its own 4 slots"
    );

    slow.open();
    slow.wait_for(events).await;
    engine.drain().await;
    assert_eq!(slow.received().len(), events);
}

#[tokio::test]
async fn a_wait_hook_waits_no_longer_than_its_budget_and_nothing_is_dropped() {
    let receiver = Receiver::stalled().await;
    let dir = tempfile::tempdir().unwrap();
    crate::install(
        dir.path(),
        "echo",
        "misbehave",
        Some(&echo(&receiver, "wait = true")),
    );
    let mut config = crate::test_config(dir.path());
    config.delivery.wait_budget_ms = 200;
    let engine = wasmhooks::Engine::new(config).await.unwrap();

    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(verdict.allowed, "on_error defaults to allow");
    assert!(
        verdict.failures[0]
            .message
            .contains("retrying in the background"),
        "{verdict:?}"
    );

    // The receiver comes back: the delivery that timed out goes out, same id.
    receiver.open();
    receiver
        .wait_until("the retried delivery", |got| got.len() >= 2)
        .await;
    engine.drain().await;
    let got = receiver.received();
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
}
