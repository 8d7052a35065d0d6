//! Every version of the `hook` world: hooks built against
//! wasmhooks:hook@0.2.0 (before the `observed` phase) and 0.3.0 (before
//! `system`) keep working beside 0.4.0 hooks, and observed and system
//! events go only to hooks that subscribe to them.

use crate::{Receiver, engine, install};
use wasmhooks::{Abi, Event, HookState, Phase};

#[tokio::test]
async fn a_0_2_0_hook_still_runs_and_observed_events_reach_only_their_subscribers() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "old", "world_0_2_0", None);
    let echo = |phases: &str| {
        format!(
            "[settings]\nmode = \"echo\"\nurl = \"{}\"\nmethods = [\"VM.*\", \"vm.*\"]\nphases = {phases}\n",
            receiver.url("/observed")
        )
    };
    install(
        dir.path(),
        "watcher",
        "misbehave",
        Some(&echo("[\"observed\"]")),
    );
    let engine = engine(dir.path()).await;

    let hooks = engine.hooks();
    let old = hooks.iter().find(|h| h.name == "old").unwrap();
    assert_eq!(old.state, HookState::Live, "{:?}", old.last_error);
    assert_eq!(old.abi, Some(Abi::Component));
    assert_eq!(
        old.subscription.as_ref().unwrap().phases,
        [Phase::Pre, Phase::Post]
    );
    let watcher = hooks.iter().find(|h| h.name == "watcher").unwrap();
    assert_eq!(
        watcher.subscription.as_ref().unwrap().phases,
        [Phase::Observed]
    );

    // The 0.2.0 hook's veto.
    let pre = Event::from_json(
        br#"{"callId":"c1","method":"vm.delete","type":"pre","timestamp":1,"params":{"id":"x"}}"#,
    )
    .unwrap();
    let verdict = engine.pre(pre).await.unwrap();
    assert_eq!(verdict.denied_by.as_deref(), Some("old"));
    assert_eq!(
        verdict.reason.as_deref(),
        Some("refused by a wasmhooks:hook@0.2.0 hook")
    );

    // An observed event: to the 0.3.0 hook that subscribed, not to the 0.2.0 one.
    let observed = Event::from_json(
        br#"{"callId":"o1","method":"VM.update","type":"observed","timestamp":2,
             "collection":"VM","action":"update","id":"x",
             "object":{"id":"x","power_state":"Running"},"previous":{"power_state":"Halted"}}"#,
    )
    .unwrap();
    engine.post(observed).await.unwrap();
    let got = receiver.wait_for(1).await;
    let body = got[0].json();
    assert_eq!(body["type"], "observed");
    assert_eq!(body["previous"]["power_state"], "Halted");
    assert_eq!(calls(&engine, "old"), 1, "the pre event only");
    assert_eq!(calls(&engine, "watcher"), 1);
}

#[tokio::test]
async fn a_0_3_0_hook_still_runs_and_system_events_reach_only_their_subscribers() {
    let pager = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "old", "world_0_3_0", None);
    install(
        dir.path(),
        "alerts",
        "misbehave",
        Some(&format!(
            "[settings]\nmode = \"echo\"\nurl = \"{}\"\nmethods = [\"wasmhooks.*\"]\nphases = [\"system\"]\n",
            pager.url("/alerts")
        )),
    );
    // A file that fails to load: the engine raises a system event.
    std::fs::write(dir.path().join("broken.wasm"), b"not a component").unwrap();
    let engine = engine(dir.path()).await;

    let hooks = engine.hooks();
    let old = hooks.iter().find(|h| h.name == "old").unwrap();
    assert_eq!(old.state, HookState::Live, "{:?}", old.last_error);
    assert_eq!(
        old.subscription.as_ref().unwrap().phases,
        [Phase::Pre, Phase::Post, Phase::Observed]
    );

    let pre = Event::from_json(
        br#"{"callId":"c1","method":"vm.delete","type":"pre","timestamp":1,"params":{"id":"x"}}"#,
    )
    .unwrap();
    let verdict = engine.pre(pre).await.unwrap();
    assert_eq!(verdict.denied_by.as_deref(), Some("old"));
    assert_eq!(
        verdict.reason.as_deref(),
        Some("refused by a wasmhooks:hook@0.3.0 hook")
    );

    // The system event: to the 0.4.0 hook that subscribed, not to the 0.3.0 one.
    let got = pager.wait_for(1).await;
    let body = got[0].json();
    assert_eq!(body["type"], "system");
    assert_eq!(body["method"], "wasmhooks.hook.load_failed");
    assert_eq!(body["params"]["hook"], "broken");
    assert_eq!(calls(&engine, "old"), 1, "the pre event only");
    assert_eq!(calls(&engine, "alerts"), 1);
}

/// How many events the hook `name` was called on.
fn calls(engine: &wasmhooks::Engine, name: &str) -> u64 {
    engine
        .hooks()
        .into_iter()
        .find(|h| h.name == name)
        .unwrap()
        .calls
}
