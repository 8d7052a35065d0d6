//! Alerts from the engine itself: system events (`wasmhooks.*`) that
//! hooks subscribe to like any other, through the one delivery path, on
//! each queue backend. A receiver that goes down pages through the
//! shipped Slack example; a storm of a thousand dead letters is a few
//! summaries, not a thousand events, and the alerts' own failed deliveries
//! raise nothing more; a hook that fails to load, then loads again, is
//! told both times.

use crate::{Backend, Receiver, eventually, free_port, install};
use axum::http::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};
use wasmhooks::{DeliveryQuery, DeliveryState, Engine, Event, Phase};

/// A `misbehave` hook echoing system events (of `methods`) to `url`.
fn echo_alerts(url: &str, methods: &str) -> String {
    format!(
        "[settings]\nmode = \"echo\"\nurl = \"{url}\"\nmethods = {methods}\nphases = [\"system\"]\n"
    )
}

async fn engine_with(
    q: &Backend,
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut wasmhooks::config::Config),
) -> Engine {
    let mut config = q.config(dir);
    tweak(&mut config);
    Engine::new(config).await.expect("engine starts")
}

async fn a_receiver_that_goes_down_pages_through_the_slack_example(q: Backend) {
    let pager = Receiver::start().await;
    // Nothing listens there: every attempt is refused.
    let port = free_port();
    let down = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "notify",
        "misbehave",
        Some(&format!(
            "[settings]\nmode = \"echo\"\nurl = \"http://{down}/hook\"\n"
        )),
    );
    install(
        dir.path(),
        "slack",
        "slack",
        Some(&format!(
            "[settings]\nurl = \"{}\"\nalerts = true\n",
            pager.url("/slack")
        )),
    );
    let engine = engine_with(&q, dir.path(), |c| {
        c.delivery.breaker_failures = 2;
        c.delivery.breaker_cooldown_ms = 200;
        c.delivery.breaker_max_cooldown_ms = 400;
        c.delivery.retry_schedule_ms = vec![10; 50];
        c.sources.system.window_secs = 1;
    })
    .await;
    let event = Event::from_json(
        br#"{"callId":"c1","method":"host.restart","type":"post","timestamp":1,"params":{}}"#,
    )
    .unwrap();
    engine.post(event).await.unwrap();

    let opened = format!("receiver {down} keeps failing; its deliveries are paused");
    let says = |text: &str| {
        let text = text.to_owned();
        move |r: &crate::Received| r.json()["text"].as_str().unwrap().contains(&text)
    };
    let alert = pager
        .wait_for_one("the circuit_opened alert", says(&opened))
        .await;
    let text = alert.json()["text"].as_str().unwrap().to_owned();
    // It says why: the last attempt's error.
    assert!(text.contains(&format!("{opened}: ")), "{text}");
    // Flagged as a system event's delivery, through the one delivery path.
    assert!(alert.header("webhook-id").starts_with("sys_"), "{text}");
    // The activity log shows it as a system event.
    let seen = engine.activity(50);
    let system = seen
        .iter()
        .find(|e| e.method == "wasmhooks.receiver.circuit_opened")
        .expect("the system event in the activity log");
    assert_eq!(system.phase, Phase::System);
    assert_eq!(system.hooks.len(), 1, "the slack hook, not the other one");
    assert_eq!(system.hooks[0].hook, "slack");

    // The receiver comes back on its port: a probe goes through, its
    // circuit closes, and the pager is told.
    let back = Receiver::on(port, |_, _| (StatusCode::OK, vec![])).await;
    back.wait_for(1).await;
    let closed = format!("receiver {down} is back; its deliveries resume");
    pager
        .wait_for_one("the circuit_closed alert", says(&closed))
        .await;
}

async fn a_storm_of_a_thousand_dead_letters_is_a_few_summaries(q: Backend) {
    const STORM: usize = 1000;
    let refusing = Receiver::with(|_, _| (StatusCode::BAD_REQUEST, vec![])).await;
    // The alerts' receiver refuses them too: their dead letters must raise
    // nothing more.
    let pager = Receiver::with(|_, _| (StatusCode::BAD_REQUEST, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "notify",
        "misbehave",
        Some(&format!(
            "[settings]\nmode = \"echo\"\nurl = \"{}\"\nmethods = [\"host.*\"]\n",
            refusing.url("/hook")
        )),
    );
    install(
        dir.path(),
        "alerts",
        "misbehave",
        Some(&echo_alerts(&pager.url("/alerts"), "[\"wasmhooks.*\"]")),
    );
    let window = Duration::from_secs(1);
    let engine = engine_with(&q, dir.path(), |c| {
        c.sources.system.window_secs = window.as_secs();
    })
    .await;
    let started = Instant::now();
    for i in 0..STORM {
        let event = Event::from_json(
            format!(r#"{{"callId":"c{i}","method":"host.stats","type":"post","timestamp":1}}"#)
                .as_bytes(),
        )
        .unwrap();
        engine.post(event).await.unwrap();
    }
    let refused = refusing.addr.to_string();
    let dead_about = |got: &[crate::Received]| -> Vec<Value> {
        got.iter()
            .map(|r| r.json())
            .filter(|e| e["method"] == "wasmhooks.delivery.dead")
            .collect()
    };
    let counted = |events: &[Value]| -> u64 {
        events
            .iter()
            .filter(|e| e["params"]["receiver"] == refused.as_str())
            .map(|e| e["params"]["count"].as_u64().unwrap())
            .sum()
    };
    pager
        .wait_until("every dead letter counted in the alerts", |got| {
            counted(&dead_about(got)) == STORM as u64
        })
        .await;
    let elapsed = started.elapsed();
    let events = dead_about(&pager.received());
    // The first at once, then at most one summary per window.
    let bound = 2 + (elapsed.as_secs_f64() / window.as_secs_f64()).ceil() as usize;
    assert!(
        events.len() <= bound,
        "{} dead-letter alerts for {STORM} dead letters in {elapsed:?} (at most {bound})",
        events.len()
    );
    assert!(events.len() < 50, "{} alerts", events.len());
    assert_eq!(events[0]["type"], "system");
    assert_eq!(events[0]["params"]["summary"], false);
    assert!(
        events
            .iter()
            .skip(1)
            .all(|e| e["params"]["summary"] == true)
    );
    let ids = events[0]["params"]["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 1);
    assert!(ids[0].as_str().unwrap().starts_with("msg_"));
    // The alerts died at the pager too, and raised nothing about it.
    assert!(
        events
            .iter()
            .all(|e| e["params"]["receiver"] == refused.as_str()),
        "no alert about the alerts' own receiver"
    );
    let mut query = DeliveryQuery::new(DeliveryState::Dead, 100);
    query.filter.receiver = Some(pager.addr.to_string());
    let pagers_dead = engine.find_deliveries(query).await.unwrap();
    assert!(!pagers_dead.is_empty());
    assert!(pagers_dead.iter().all(|d| d.id.starts_with("sys_")));
}

on_every_queue!(
    a_receiver_that_goes_down_pages_through_the_slack_example,
    a_storm_of_a_thousand_dead_letters_is_a_few_summaries,
);

#[tokio::test]
async fn a_hook_that_fails_to_load_then_loads_again_is_told_both_times() {
    let pager = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "alerts",
        "misbehave",
        Some(&echo_alerts(
            &pager.url("/alerts"),
            "[\"wasmhooks.hook.*\"]",
        )),
    );
    std::fs::write(dir.path().join("broken.wasm"), b"not a component").unwrap();
    let engine = engine_with(&Backend::Sqlite, dir.path(), |c| {
        c.watch = false;
        c.sources.system.window_secs = 1;
    })
    .await;
    let failed = pager.wait_for(1).await[0].json();
    assert_eq!(failed["type"], "system");
    assert_eq!(failed["method"], "wasmhooks.hook.load_failed");
    let params = &failed["params"];
    assert_eq!(params["hook"], "broken");
    assert!(params["file"].as_str().unwrap().ends_with("broken.wasm"));
    assert_eq!(params["serving"], Value::Null, "no older version serves");
    assert!(params["error"].as_str().unwrap().len() > 10, "{params}");
    assert!(failed["engine"].as_str().unwrap().contains('/'));

    let fixed = format!(
        "[settings]\nmode = \"echo\"\nurl = \"{}\"\nmethods = [\"none\"]\n",
        pager.url("/none")
    );
    install(dir.path(), "broken", "misbehave", Some(&fixed));
    engine.reload().await.unwrap();
    let recovered_alert = |hook: &'static str| {
        move |r: &crate::Received| {
            let e = r.json();
            e["method"] == "wasmhooks.hook.recovered" && e["params"]["hook"] == hook
        }
    };
    let recovered = pager
        .wait_for_one("the recovered alert", recovered_alert("broken"))
        .await
        .json();
    assert_eq!(recovered["params"]["hook"], "broken");
    assert_eq!(recovered["params"]["version"].as_str().unwrap().len(), 12);
    eventually("the hook live", || async {
        engine.hooks().iter().all(|h| h.last_error.is_none())
    })
    .await;

    // A failing hook whose file is removed fails no more: told too.
    std::fs::write(dir.path().join("gone.wasm"), b"not a component either").unwrap();
    engine.reload().await.unwrap();
    std::fs::remove_file(dir.path().join("gone.wasm")).unwrap();
    engine.reload().await.unwrap();
    let gone = pager
        .wait_for_one("the removed hook's alert", recovered_alert("gone"))
        .await
        .json();
    assert_eq!(gone["params"]["version"], Value::Null, "no version serves");
}

#[tokio::test]
async fn callers_cannot_post_a_system_event() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(&Backend::Sqlite, dir.path(), |_| {}).await;
    let forged = Event::from_json(
        br#"{"callId":"x","method":"wasmhooks.receiver.circuit_opened","type":"system","timestamp":1}"#,
    )
    .unwrap();
    assert!(matches!(
        engine.post(forged).await,
        Err(wasmhooks::Error::WrongPhase {
            actual: Phase::System,
            ..
        })
    ));
    // Nor one of its methods under another phase: a hook can trust them.
    for phase in ["pre", "post", "observed"] {
        let posing = Event::from_json(
            format!(
                r#"{{"callId":"x","method":"wasmhooks.delivery.dead","type":"{phase}","timestamp":1}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let refused = match phase {
            "pre" => engine.pre(posing).await.map(drop),
            _ => engine.post(posing).await,
        };
        assert!(
            matches!(
                refused,
                Err(wasmhooks::Error::Event(wasmhooks::EventError::Field {
                    field: "method",
                    ..
                }))
            ),
            "{phase}: {refused:?}"
        );
    }
}
