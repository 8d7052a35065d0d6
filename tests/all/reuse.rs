//! Instance reuse (`[reuse]` in NAME.toml): a fresh instance per event by
//! default; warm instances when a hook opts in, replaced after N events or
//! a trap.

use crate::{eventually, fixture, load_error, one_hook};
use wasmhooks::{Engine, HookState, Stage};

/// The reasons (`misbehave` in count mode: how many events its instance
/// has handled) of `n` pre events sent one after another, or `trap`.
async fn counts(engine: &Engine, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
        seen.push(match (&verdict.reason, verdict.failures.first()) {
            (Some(reason), _) => reason.clone(),
            (None, Some(f)) if f.kind == "trap" => "trap".to_owned(),
            _ => panic!("unexpected verdict {verdict:?}"),
        });
    }
    seen
}

#[tokio::test]
async fn each_event_gets_a_fresh_instance_unless_the_hook_opts_into_reuse() {
    let (_dir, engine) = one_hook("count", "misbehave", "[settings]\nmode = \"count\"\n").await;
    assert_eq!(
        counts(&engine, 4).await,
        ["1", "1", "1", "1"],
        "no state carries over"
    );

    let toml = "[reuse]\nevents = 3\n[settings]\nmode = \"count\"\n";
    let (_dir, engine) = one_hook("count", "misbehave", toml).await;
    assert_eq!(engine.hooks()[0].state, HookState::Live);
    assert_eq!(
        counts(&engine, 7).await,
        ["1", "2", "3", "1", "2", "3", "1"],
        "one warm instance serves 3 events, then a new one takes over"
    );
}

/// A warm instance's stdio fills up across its events: it is retired before
/// a call could have less room than a fresh instance's, instead of
/// trapping on a write.
#[tokio::test]
async fn a_warm_instance_that_writes_a_lot_is_retired_before_its_output_fills() {
    // 4 KiB a call: after the 5th, less than a fresh instance's 16 KiB is left.
    let toml = "[reuse]\nevents = 100\n[settings]\nmode = \"count\"\nprint_bytes = 4096\n";
    let (_dir, engine) = one_hook("count", "misbehave", toml).await;
    assert_eq!(
        counts(&engine, 10).await,
        ["1", "2", "3", "4", "5", "1", "2", "3", "4", "5"],
        "no call traps for want of room"
    );
    assert_eq!(engine.hooks()[0].errors, 0);
}

/// An instance idle for `idle_secs` is dropped (its memory given back); the
/// next event sets up a new one.
#[tokio::test]
async fn an_idle_warm_instance_is_dropped() {
    let toml = "[reuse]\nevents = 100\nidle_secs = 1\n[settings]\nmode = \"count\"\n";
    let (_dir, engine) = one_hook("count", "misbehave", toml).await;
    assert_eq!(
        engine.hooks()[0].warm,
        Some(0),
        "none before the first event"
    );
    assert_eq!(counts(&engine, 2).await, ["1", "2"]);
    assert_eq!(engine.hooks()[0].warm, Some(1));
    let metrics = engine.metrics().await.unwrap();
    assert!(
        metrics.contains("wasmhooks_hook_warm_instances{hook=\"count\"} 1"),
        "{metrics}"
    );
    eventually("the idle instance is dropped", || async {
        engine.hooks()[0].warm == Some(0)
    })
    .await;
    assert_eq!(counts(&engine, 1).await, ["1"], "a new instance");

    // A fresh-instance hook has no warm pool to show.
    let (_dir, engine) = one_hook("count", "misbehave", "[settings]\nmode = \"count\"\n").await;
    assert_eq!(engine.hooks()[0].warm, None);
}

#[tokio::test]
async fn a_warm_instance_that_traps_is_replaced() {
    let toml = "[reuse]\nevents = 100\n[settings]\nmode = \"count\"\ntrap_at = 3\n";
    let (_dir, engine) = one_hook("count", "misbehave", toml).await;
    assert_eq!(
        counts(&engine, 6).await,
        ["1", "2", "trap", "1", "2", "trap"],
        "the instance that trapped is not used again"
    );
    assert_eq!(engine.hooks()[0].errors, 2);
}

#[tokio::test]
async fn reuse_settings_are_checked() {
    let count = "[settings]\nmode = \"count\"\n";
    // A WASI command runs once per instance: reuse is refused.
    let command = "[subscription]\nmethods = [\"*\"]\nphases = [\"pre\"]\n";
    for (guest, reuse, settings, stage, says) in [
        ("misbehave", "events = 0", count, Stage::Settings, "[reuse]"),
        (
            "misbehave",
            "events = 10\nidle_secs = 0",
            count,
            Stage::Settings,
            "idle_secs",
        ),
        ("command", "events = 10", command, Stage::Setup, "[reuse]"),
    ] {
        let toml = format!("[reuse]\n{reuse}\n{settings}");
        let (_dir, engine) = one_hook("h", guest, &toml).await;
        let error = load_error(&engine);
        assert_eq!(error.stage, stage, "{toml}: {error:?}");
        assert!(error.reason.contains(says), "{toml}: {error:?}");
    }
}
