//! XO's event stream as a source (`[sources.xo]`), against a stand-in in
//! XO's exact format (tests/support/xo_events.rs): each transition once
//! with its previous value, a gap found again by a resync, bounded memory
//! under churn with a slow hook, and a refused token shown while the
//! engine keeps serving.

use crate::xo_events::FakeXo;
use crate::{Receiver, eventually, install, test_config};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use wasmhooks::config::XoSourceConfig;
use wasmhooks::sources::SourceState;
use wasmhooks::{Engine, Event};

const TOKEN: &str = "xo-token-for-the-tests";
/// XO pings every 30 s; the stand-in, often, so a test never waits on it.
const PING: Duration = Duration::from_millis(200);

fn source(xo: &FakeXo, collections: &[(&str, &[&str])]) -> XoSourceConfig {
    XoSourceConfig {
        url: xo.url(),
        token: TOKEN.to_owned().into(),
        collections: collections
            .iter()
            .map(|(c, f)| (c.to_string(), f.iter().map(|s| s.to_string()).collect()))
            .collect::<BTreeMap<_, _>>(),
        max_objects: 100_000,
        max_pending: 10_000,
        reconnect_max_ms: 1_000,
        idle_timeout_ms: 10_000,
        ca_file: None,
        insecure_skip_tls_verify: false,
    }
}

/// An engine with `[sources.xo]`, and a `misbehave` hook echoing the
/// observed events of `VM.*` to `receiver` (with `extra` settings).
async fn engine_on(
    xo: &FakeXo,
    receiver: &Receiver,
    tweak: impl FnOnce(&mut XoSourceConfig),
    extra: &str,
) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[settings]\nmode = \"echo\"\nurl = \"{}\"\nmethods = [\"VM.*\"]\nphases = [\"observed\"]\n{extra}",
        receiver.url("/observed")
    );
    install(dir.path(), "watch", "misbehave", Some(&toml));
    let mut config = test_config(dir.path());
    let mut xo_config = source(xo, &[("VM", &["power_state"])]);
    tweak(&mut xo_config);
    config.sources.xo = Some(xo_config);
    let engine = Engine::new(config).await.expect("engine starts");
    (dir, engine)
}

async fn live(engine: &Engine) {
    eventually("the source to be live", || async {
        engine.sources()[0].state == SourceState::Live
    })
    .await;
}

fn vm(id: &str, power: &str) -> Value {
    json!({ "id": id, "type": "VM", "power_state": power, "name_label": format!("vm {id}") })
}

/// The observed events the receiver got, as (method, id, previous power state).
fn got(receiver: &Receiver) -> Vec<Value> {
    receiver.received().iter().map(|r| r.json()).collect()
}

/// An observed event's place in the order the source saw changes (its
/// call id ends with it): deliveries may arrive in any order.
fn seq(event: &Value) -> u64 {
    event["callId"]
        .as_str()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn each_transition_arrives_once_with_its_previous_value() {
    let xo = FakeXo::start(TOKEN, PING).await;
    for id in ["vm-1", "vm-2"] {
        xo.add("VM", vm(id, "Halted"));
    }
    let receiver = Receiver::start().await;
    let (_dir, engine) = engine_on(&xo, &receiver, |_| {}, "").await;
    live(&engine).await;
    assert!(
        receiver.received().is_empty(),
        "the first listing is a baseline, silently"
    );

    xo.set("VM", "vm-1", "power_state", "Running".into());
    let first = receiver.wait_for(1).await[0].json();
    assert_eq!(first["type"], "observed");
    assert_eq!(first["method"], "VM.update");
    assert_eq!(first["source"], "xo");
    assert_eq!(first["collection"], "VM");
    assert_eq!(first["action"], "update");
    assert_eq!(first["id"], "vm-1");
    assert_eq!(first["object"]["power_state"], "Running");
    assert_eq!(first["previous"], json!({ "power_state": "Halted" }));
    assert_eq!(first["changed"], json!(["power_state"]));
    assert_eq!(first["resync"], false);

    // A field not watched: XO sends nothing. Then more transitions.
    xo.set("VM", "vm-1", "name_label", "renamed".into());
    xo.set("VM", "vm-2", "power_state", "Running".into());
    xo.set("VM", "vm-1", "power_state", "Halted".into());
    // A new object announced as an update (as XO's tasks are) is an add.
    xo.add_as("VM", vm("vm-3", "Running"), "update");
    xo.remove("VM", "vm-2");
    let all = receiver.wait_for(5).await;
    let mut events: Vec<Value> = all.iter().map(|r| r.json()).collect();
    // Deliveries may arrive in any order; the source's is in the call ids.
    events.sort_by_key(seq);
    let of = |id: &str| -> Vec<(String, Value)> {
        events
            .iter()
            .filter(|e| e["id"] == id)
            .map(|e| {
                (
                    e["method"].as_str().unwrap().to_owned(),
                    e["previous"]["power_state"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        of("vm-1"),
        [
            ("VM.update".into(), json!("Halted")),
            ("VM.update".into(), json!("Running"))
        ],
        "in order, each once"
    );
    assert_eq!(
        of("vm-2"),
        [
            ("VM.update".into(), json!("Halted")),
            ("VM.remove".into(), Value::Null)
        ]
    );
    assert_eq!(of("vm-3"), [("VM.add".into(), Value::Null)]);
    let status = &engine.sources()[0];
    assert_eq!(status.events, 5);
    assert_eq!(status.objects, 2);
    assert_eq!(status.connections, 1);
    eventually("nothing more to deliver", || async {
        engine.backlog().await.unwrap() == 0
    })
    .await;
    assert_eq!(receiver.received().len(), 5, "nothing twice");
}

#[tokio::test]
async fn after_xo_restarts_a_resync_brings_the_changes_made_during_the_gap() {
    let xo = FakeXo::start(TOKEN, PING).await;
    for (id, power) in [("vm-1", "Running"), ("vm-2", "Running"), ("vm-3", "Halted")] {
        xo.add("VM", vm(id, power));
    }
    let receiver = Receiver::start().await;
    let (_dir, engine) = engine_on(&xo, &receiver, |_| {}, "").await;
    live(&engine).await;
    xo.set("VM", "vm-3", "power_state", "Running".into());
    receiver.wait_for(1).await;

    // XO goes down mid-stream; meanwhile, HA stops vm-1, vm-2 is deleted
    // and vm-4 created. Nobody tells the engine.
    xo.kill();
    eventually("the source to notice", || async {
        engine.sources()[0].state != SourceState::Live
    })
    .await;
    xo.set("VM", "vm-1", "power_state", "Halted".into());
    xo.remove("VM", "vm-2");
    xo.add("VM", vm("vm-4", "Running"));
    xo.restart(PING).await;

    receiver.wait_for(5).await;
    live(&engine).await;
    let events = got(&receiver);
    let resync = events
        .iter()
        .find(|e| e["method"] == "VM.resync")
        .expect("a resync event");
    assert_eq!(resync["action"], "resync");
    assert!(
        resync["reason"]
            .as_str()
            .unwrap()
            .contains("changes made meanwhile may not have been told"),
        "{resync}"
    );
    let found: Vec<(String, String, Value)> = events
        .iter()
        .filter(|e| e["resync"] == true)
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["id"].as_str().unwrap().to_owned(),
                e["previous"]["power_state"].clone(),
            )
        })
        .collect();
    let mut found = found;
    found.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        found,
        [
            ("VM.update".into(), "vm-1".into(), json!("Running")),
            ("VM.remove".into(), "vm-2".into(), Value::Null),
            ("VM.add".into(), "vm-4".into(), Value::Null),
        ]
    );
    let status = &engine.sources()[0];
    assert_eq!(status.resyncs, 1);
    assert!(status.connections >= 2);

    // Live again: a change after the gap comes as usual.
    xo.set("VM", "vm-4", "power_state", "Halted".into());
    let last = receiver.wait_for(6).await.last().unwrap().json();
    assert_eq!(
        (last["id"].as_str(), last["resync"].as_bool()),
        (Some("vm-4"), Some(false))
    );
}

#[tokio::test]
async fn ten_thousand_objects_churning_past_a_slow_hook_keep_memory_bounded() {
    let xo = FakeXo::start(TOKEN, PING).await;
    for i in 0..10_000 {
        xo.add("VM", vm(&format!("vm-{i}"), "Halted"));
    }
    let receiver = Receiver::start().await;
    // The hook takes 5 ms an event: far slower than XO's changes come.
    let (_dir, engine) = engine_on(
        &xo,
        &receiver,
        |c| {
            c.max_objects = 1_000;
            c.max_pending = 256;
        },
        "delay_ms = 5\n",
    )
    .await;
    live(&engine).await;
    assert_eq!(
        engine.sources()[0].objects,
        1_000,
        "a listing of 10,000 keeps 1,000"
    );
    for round in ["Running", "Halted", "Paused"] {
        for i in 0..10_000 {
            xo.set("VM", &format!("vm-{i}"), "power_state", round.into());
        }
        let status = &engine.sources()[0];
        assert!(status.objects <= 1_000, "{} objects kept", status.objects);
    }
    // The stream never waited for the engine: events it could not take were
    // dropped, counted, and the stream read again from scratch.
    eventually("the source to catch up and be live", || async {
        let s = &engine.sources()[0];
        s.state == SourceState::Live && s.dropped > 0 && s.resyncs >= 1
    })
    .await;
    let status = &engine.sources()[0];
    assert!(status.objects <= 1_000, "{} objects kept", status.objects);
    assert!(xo.streams() <= 1, "one stream at a time");
    // And the engine still serves.
    let pre = Event::from_json(br#"{"callId":"c","method":"vm.start","type":"pre","timestamp":1}"#)
        .unwrap();
    assert!(engine.pre(pre).await.unwrap().allowed);
}

#[tokio::test]
async fn a_refused_token_is_shown_and_the_engine_keeps_serving() {
    let xo = FakeXo::start("another-token", PING).await;
    let receiver = Receiver::start().await;
    let (_dir, engine) = engine_on(&xo, &receiver, |_| {}, "").await;
    eventually("the refusal to show", || async {
        engine.sources()[0].state == SourceState::Refused
    })
    .await;
    let status = &engine.sources()[0];
    let error = status.last_error.as_deref().unwrap();
    assert!(
        error.starts_with("XO refused the token (401: invalid credentials)"),
        "{error}"
    );
    assert!(
        error.contains("xo-cli token.create"),
        "says what to do: {error}"
    );
    let metrics = engine.metrics().await.unwrap();
    assert!(
        metrics.contains("wasmhooks_source_failures_total{source=\"xo\",kind=\"refused\"}"),
        "{metrics}"
    );
    let pre = Event::from_json(br#"{"callId":"c","method":"vm.start","type":"pre","timestamp":1}"#)
        .unwrap();
    assert!(engine.pre(pre).await.unwrap().allowed);
}

#[tokio::test]
async fn changes_made_while_xo_lists_are_folded_in_never_told_backwards() {
    let xo = FakeXo::start(TOKEN, PING).await;
    xo.add("VM", vm("vm-1", "Halted"));
    xo.add("VM", vm("vm-2", "Halted"));
    let receiver = Receiver::start().await;
    let (_dir, engine) = engine_on(&xo, &receiver, |_| {}, "").await;
    live(&engine).await;

    // XO restarts; the engine subscribes again, and before XO makes its
    // listing, vm-1 changes twice: the stream says so first.
    xo.kill();
    eventually("the source to notice", || async {
        engine.sources()[0].state != SourceState::Live
    })
    .await;
    let (listing, release) = xo.hold_listings();
    xo.restart(PING).await;
    listing.await.unwrap();
    xo.set("VM", "vm-1", "power_state", "Running".into());
    xo.set("VM", "vm-1", "power_state", "Paused".into());
    release.send(true).unwrap();
    live(&engine).await;
    // A later change, to know that everything before it has come.
    xo.set("VM", "vm-2", "power_state", "Running".into());
    receiver
        .wait_until("vm-2's change", |got| {
            got.iter().any(|r| r.json()["id"] == "vm-2")
        })
        .await;
    eventually("nothing more to deliver", || async {
        engine.backlog().await.unwrap() == 0
    })
    .await;
    // vm-1's events, in the source's order, form one chain from what hooks
    // knew to what XO says now: each from the state the one before told,
    // none backwards or twice. (Whether Running shows depends on whether
    // its event was read before the listing came: both are true histories.)
    let mut events = got(&receiver);
    events.sort_by_key(seq);
    let chain: Vec<(Value, Value)> = events
        .iter()
        .filter(|e| e["id"] == "vm-1")
        .map(|e| {
            (
                e["previous"]["power_state"].clone(),
                e["object"]["power_state"].clone(),
            )
        })
        .collect();
    assert!(
        chain == [(json!("Halted"), json!("Paused"))]
            || chain
                == [
                    (json!("Halted"), json!("Running")),
                    (json!("Running"), json!("Paused"))
                ],
        "{chain:?}"
    );
}

#[tokio::test]
async fn events_lost_to_a_slow_hook_leave_every_object_a_consistent_history() {
    let xo = FakeXo::start(TOKEN, PING).await;
    let vms: Vec<String> = (0..40).map(|i| format!("vm-{i}")).collect();
    for id in &vms {
        xo.add("VM", vm(id, "s0"));
    }
    let receiver = Receiver::start().await;
    // One event waits per lane at most, behind a hook that takes 20 ms.
    let (_dir, engine) = engine_on(&xo, &receiver, |c| c.max_pending = 8, "delay_ms = 20\n").await;
    live(&engine).await;
    for round in 1..=5 {
        for id in &vms {
            xo.set("VM", id, "power_state", format!("s{round}").into());
        }
    }
    // Every object's last event says its state now.
    let last_of = |events: &[Value], id: &str| {
        events
            .iter()
            .filter(|e| e["id"] == id && e["action"] != "resync")
            .max_by_key(|e| seq(e))
            .map(|e| e["object"]["power_state"].clone())
    };
    let waiting = async {
        receiver
            .wait_until("every VM's last state told", |got| {
                let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
                vms.iter()
                    .all(|id| last_of(&events, id) == Some(json!("s5")))
            })
            .await
    };
    tokio::pin!(waiting);
    loop {
        tokio::select! {
            () = &mut waiting => break,
            () = tokio::time::sleep(Duration::from_secs(2)) => eprintln!("DEBUG {:?}", engine.sources()[0]),
        }
    }
    let status = &engine.sources()[0];
    assert!(status.dropped > 0, "the lanes overflowed: {status:?}");
    assert!(status.resyncs >= 1);
    // Each object's events, in the source's order, form one chain: each
    // says the state the one before it told, none repeats a transition.
    let mut events = got(&receiver);
    events.sort_by_key(seq);
    for id in &vms {
        let mut told = json!("s0");
        for e in events.iter().filter(|e| e["id"] == *id) {
            assert_eq!(e["previous"]["power_state"], told, "{id}: {e}");
            assert_ne!(e["object"]["power_state"], told, "{id}: told twice: {e}");
            told = e["object"]["power_state"].clone();
        }
        assert_eq!(told, json!("s5"), "{id}");
    }
}

#[tokio::test]
async fn losing_xo_and_finding_it_again_are_system_events() {
    let xo = FakeXo::start(TOKEN, PING).await;
    xo.add("VM", vm("vm-1", "Running"));
    let pager = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alerts = format!(
        "[settings]\nmode = \"echo\"\nurl = \"{}\"\nmethods = [\"wasmhooks.source.*\"]\nphases = [\"system\"]\n",
        pager.url("/alerts")
    );
    install(dir.path(), "alerts", "misbehave", Some(&alerts));
    let mut config = test_config(dir.path());
    config.sources.xo = Some(source(&xo, &[("VM", &["power_state"])]));
    config.sources.system.window_secs = 1;
    let engine = Engine::new(config).await.expect("engine starts");
    live(&engine).await;

    xo.kill();
    let lost = pager.wait_for(1).await[0].json();
    assert_eq!(lost["type"], "system");
    assert_eq!(lost["method"], "wasmhooks.source.disconnected");
    assert_eq!(lost["params"]["source"], "xo");
    assert_eq!(lost["params"]["url"], xo.url());
    assert!(
        lost["params"]["error"].as_str().unwrap().len() > 5,
        "{lost}"
    );

    xo.restart(PING).await;
    live(&engine).await;
    // Within the window, the return is its summary, named after the
    // latest alert: the source's state now.
    pager
        .wait_until("the reconnected alert", |got| {
            got.iter()
                .any(|r| r.json()["method"] == "wasmhooks.source.reconnected")
        })
        .await;
    let events: Vec<Value> = pager.received().iter().map(|r| r.json()).collect();
    assert_eq!(
        events.last().unwrap()["method"],
        "wasmhooks.source.reconnected"
    );
    assert!(events.len() <= 3, "{events:?}");
}
