//! Delivery behaviour against a real receiver: retries, permanent failures,
//! and `wait` hooks.

use crate::{
    Backend, Receiver, eventually, failing_until_up, fixture, free_port, install, one_hook,
    test_config,
};
use axum::http::StatusCode;
use std::sync::atomic::Ordering;
use wasmhooks::{DeliveryState, Engine, Replay};

fn echo(receiver: &Receiver, extra: &str) -> String {
    format!(
        "{extra}\n[settings]\nmode = \"echo\"\nurl = \"{}\"\nmark = \"m\"\n",
        receiver.url("/hook")
    )
}

async fn retries_5xx_then_delivers_with_the_same_id(q: Backend) {
    let receiver = Receiver::with(|_, n| {
        if n < 2 {
            (StatusCode::SERVICE_UNAVAILABLE, vec![])
        } else {
            (StatusCode::OK, vec![])
        }
    })
    .await;
    let (_dir, engine) = q.one_hook("echo", "misbehave", &echo(&receiver, "")).await;
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(3).await;
    engine.drain().await;
    assert_eq!(receiver.received().len(), 3);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
    assert_eq!(engine.backlog().await.unwrap(), 0);
}

async fn honours_retry_after_on_429(q: Backend) {
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
    let (_dir, engine) = q.one_hook("echo", "misbehave", &echo(&receiver, "")).await;
    let start = std::time::Instant::now();
    engine.post(fixture("vm.start.post")).await.unwrap();
    receiver.wait_for(2).await;
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(1),
        "waited for Retry-After, not the 10 ms schedule"
    );
}

async fn gone_and_other_4xx_are_not_retried(q: Backend) {
    for status in [
        StatusCode::GONE,
        StatusCode::BAD_REQUEST,
        StatusCode::MOVED_PERMANENTLY,
    ] {
        let receiver =
            Receiver::with(move |_, _| (status, vec![("location", "http://127.0.0.1:9/".into())]))
                .await;
        let (_dir, engine) = q.one_hook("echo", "misbehave", &echo(&receiver, "")).await;
        engine.post(fixture("vm.start.post")).await.unwrap();
        receiver.wait_for(1).await;
        engine.drain().await;
        assert_eq!(receiver.received().len(), 1, "{status} is not retried");

        // Dead letters are kept for `dead_letter_days`, then deleted.
        let dead = || async {
            engine
                .deliveries(DeliveryState::Dead, 10)
                .await
                .unwrap()
                .len()
        };
        assert_eq!(dead().await, 1);
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(engine.purge_dead(day).await.unwrap(), 0, "too recent");
        assert_eq!(dead().await, 1);
        assert_eq!(
            engine.purge_dead(std::time::Duration::ZERO).await.unwrap(),
            1
        );
        assert_eq!(dead().await, 0);
    }
}

async fn a_receiver_that_is_down_is_retried_until_the_schedule_is_spent(q: Backend) {
    // Bind then drop a listener: a loopback port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "wait = true\n[settings]\nmode = \"echo\"\nurl = \"http://127.0.0.1:{port}/down\"\n"
    );
    let (_dir, engine) = q.one_hook("echo", "misbehave", &toml).await;
    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(verdict.allowed, "on_error defaults to allow");
    let message = &verdict.failures[0].message;
    assert!(
        message.contains("gave up after 4 attempts") && message.contains("could not connect"),
        "{message}"
    );
}

async fn a_wait_hook_delivers_before_the_verdict_returns(q: Backend) {
    let receiver = Receiver::start().await;
    let (_dir, engine) = q
        .one_hook("echo", "misbehave", &echo(&receiver, "wait = true"))
        .await;
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

async fn a_slow_receiver_does_not_delay_another(q: Backend) {
    let slow = Receiver::stalled().await;
    let fast = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    crate::install(dir.path(), "slow", "misbehave", Some(&echo(&slow, "")));
    crate::install(dir.path(), "fast", "misbehave", Some(&echo(&fast, "")));
    let mut config = q.config(dir.path());
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

    // The receiver comes back: the delivery that was late goes through, on
    // the same path as every other delivery.
    assert_eq!(engine.backlog().await.unwrap(), 1, "still queued");
    receiver.open();
    engine.drain().await;
    let got = receiver.received();
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
    assert_eq!(engine.backlog().await.unwrap(), 0);
}

async fn a_receiver_down_then_up_gets_the_delivery(q: Backend) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/late");
    let toml = format!("[settings]\nmode = \"echo\"\nurl = \"{url}\"\n");
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "echo", "misbehave", Some(&toml));
    let mut config = q.config(dir.path());
    config.delivery.retry_schedule_ms = vec![10, 20, 40, 80, 160, 320, 640, 1280, 2560];
    let engine = Engine::new(config).await.unwrap();
    engine.post(fixture("vm.start.post")).await.unwrap();
    eventually("a failed attempt", || async {
        let failed = engine.deliveries(DeliveryState::Failed, 10).await.unwrap();
        failed.first().is_some_and(|d| d.attempts >= 2)
    })
    .await;
    let failed = engine.deliveries(DeliveryState::Failed, 10).await.unwrap();
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("could not connect"),
        "{failed:?}"
    );

    let receiver = Receiver::on(port, |_, _| (StatusCode::OK, vec![])).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("webhook-id"), failed[0].id);
    engine.drain().await;
    assert_eq!(engine.backlog().await.unwrap(), 0);
}

/// An engine deletes, as it starts (and hourly), the dead letters older
/// than `delivery.dead_letter_days`; younger ones stay.
#[tokio::test]
async fn dead_letters_past_their_retention_are_deleted() {
    let receiver = Receiver::with(|_, _| (StatusCode::GONE, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "echo", "misbehave", Some(&echo(&receiver, "")));
    let config = test_config(dir.path());
    let db = config.state_dir.clone().unwrap().join("wasmhooks.db");
    let engine = Engine::new(config.clone()).await.unwrap();
    for _ in 0..2 {
        engine.post(fixture("vm.start.post")).await.unwrap();
    }
    engine.drain().await;
    assert_eq!(
        engine
            .deliveries(DeliveryState::Dead, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    drop(engine);

    // Age one of them to 31 days, straight in the state file.
    let day_ms = 86_400_000i64;
    let aged = rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE deliveries SET created_ms = created_ms - ?1
             WHERE id = (SELECT min(id) FROM deliveries)",
            [31 * day_ms],
        )
        .unwrap();
    assert_eq!(aged, 1);
    let engine = Engine::new(config).await.unwrap(); // dead_letter_days = 30
    eventually("the old dead letter is deleted", || async {
        engine
            .deliveries(DeliveryState::Dead, 10)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
}

#[tokio::test]
async fn a_spent_schedule_makes_a_dead_letter_that_can_be_retried() {
    let (up, receiver) = failing_until_up(StatusCode::INTERNAL_SERVER_ERROR).await;
    let (_dir, engine) = one_hook("echo", "misbehave", &echo(&receiver, "")).await;
    engine.post(fixture("vm.start.post")).await.unwrap();
    engine.drain().await; // sent or dead: here dead, after 1 + 3 attempts
    let dead = engine.deliveries(DeliveryState::Dead, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 4);
    assert_eq!(dead[0].last_status, Some(500));
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("gave up after 4 attempts")
    );
    assert_eq!(receiver.received().len(), 4);
    let metrics = engine.metrics().await.unwrap();
    let label = format!("{{receiver=\"{}\"}}", receiver.addr);
    for line in [
        format!("wasmhooks_delivery_failures_total{label} 4"),
        format!("wasmhooks_delivery_retries_total{label} 3"),
        format!("wasmhooks_dead_letters_total{label} 1"),
        format!("wasmhooks_queue_depth{label} 0"),
    ] {
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }

    up.store(true, Ordering::SeqCst);
    assert_eq!(
        engine.retry(Replay::One("msg_nope".into())).await.unwrap(),
        0
    );
    assert_eq!(
        engine.retry(Replay::One(dead[0].id.clone())).await.unwrap(),
        1
    );
    let got = receiver.wait_for(5).await;
    assert_eq!(got[4].header("webhook-id"), dead[0].id);
    engine.drain().await;
    assert!(
        engine
            .deliveries(DeliveryState::Dead, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_failing_receiver_is_paused_then_probed_then_resumed(q: Backend) {
    let (up, receiver) = failing_until_up(StatusCode::SERVICE_UNAVAILABLE).await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "echo", "misbehave", Some(&echo(&receiver, "")));
    let mut config = q.config(dir.path());
    config.delivery.retry_schedule_ms = vec![10; 20];
    config.delivery.per_receiver_concurrency = 1;
    config.delivery.breaker_failures = 3;
    config.delivery.breaker_cooldown_ms = 400;
    let engine = Engine::new(config).await.unwrap();
    for _ in 0..10 {
        engine.post(fixture("vm.start.post")).await.unwrap();
    }
    // Three failures in a row open the circuit: the receiver's pending
    // deliveries are held back, none spends its schedule meanwhile.
    let open = format!(
        "wasmhooks_receiver_circuit_open{{receiver=\"{}\"}} 1",
        receiver.addr
    );
    eventually("the circuit to open", || async {
        engine.metrics().await.unwrap().contains(&open)
    })
    .await;
    let while_open = receiver.received().len();
    let pending = engine
        .deliveries(DeliveryState::Pending, 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 10);
    assert!(pending.iter().all(|d| d.attempts <= 3), "{pending:?}");
    assert!(
        while_open <= 4,
        "{while_open} attempts before the circuit opened"
    );

    up.store(true, Ordering::SeqCst);
    // After the pause, one probe succeeds and the rest follow.
    let got = receiver.wait_for(while_open + 10).await;
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 10);
    engine.drain().await;
    assert_eq!(
        receiver.received().len(),
        while_open + 10,
        "no more attempts than needed"
    );
}

/// Answered 500, then 429 with a body, then 200: the delivery's three
/// attempts are kept with their statuses, bodies and kept headers, and
/// shown by `GET /v1/deliveries/{id}`; the `Authorization` the hook set
/// and the receiver's `Set-Cookie` are neither kept nor shown.
async fn each_attempt_is_kept_with_the_receivers_answer(q: Backend) {
    let receiver = Receiver::answering(0, |r, n| match n {
        // A debug page that echoes what it got: the credential is not kept.
        0 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            vec![],
            format!("boom: {}", r.header("authorization")).into_bytes(),
        ),
        1 => (
            StatusCode::TOO_MANY_REQUESTS,
            vec![
                ("retry-after", "0".into()),
                ("set-cookie", "session=c00kie-value".into()),
                ("x-request-id", "req-42".into()),
            ],
            b"slow down, please".to_vec(),
        ),
        _ => (StatusCode::OK, vec![], b"{\"ok\":true}".to_vec()),
    })
    .await;
    let toml = echo(&receiver, "").replace(
        "[settings]\n",
        "[settings]\nauthorization = \"Bearer hunter2-t0ken\"\n",
    );
    let (_dir, engine) = q.one_hook("echo", "misbehave", &toml).await;
    let base = crate::serve::serve_app(wasmhooks::server::router(engine.clone())).await;
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(3).await;
    assert_eq!(got[0].header("authorization"), "Bearer hunter2-t0ken");
    let id = got[0].header("webhook-id");
    let url = format!("{base}/v1/deliveries/{id}");
    let client = reqwest::Client::new();
    let detail = || async {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    eventually("the delivery recorded as delivered", || async {
        detail().await.contains("\"state\":\"delivered\"")
    })
    .await;
    let text = detail().await;
    for secret in ["hunter2", "c00kie"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["delivery"]["attempts"], 3);
    let history = shown["history"].as_array().unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap(),
                a["status"].as_u64().unwrap(),
                a["body"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("retry", 500, "boom: [redacted]"),
            ("retry", 429, "slow down, please"),
            ("delivered", 200, "{\"ok\":true}"),
        ]
    );
    let headers = history[1]["headers"].to_string();
    assert!(
        headers.contains("retry-after") && headers.contains("req-42"),
        "{headers}"
    );
    assert!(
        history
            .iter()
            .all(|a| a["engine"].as_str().unwrap().contains('/'))
    );
    assert!(
        shown["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["authorization", "[redacted]"]))
    );
    let missing = client
        .get(format!("{base}/v1/deliveries/msg_none"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

on_every_queue!(
    each_attempt_is_kept_with_the_receivers_answer,
    retries_5xx_then_delivers_with_the_same_id,
    honours_retry_after_on_429,
    gone_and_other_4xx_are_not_retried,
    a_receiver_that_is_down_is_retried_until_the_schedule_is_spent,
    a_wait_hook_delivers_before_the_verdict_returns,
    a_slow_receiver_does_not_delay_another,
    a_receiver_down_then_up_gets_the_delivery,
    a_failing_receiver_is_paused_then_probed_then_resumed,
);
