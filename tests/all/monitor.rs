//! Monitor mode: a gate's vetoes are counted and reported, not enforced,
//! so an operator can try a new gate on live traffic first.

use crate::{engine, fixture, fixture_bytes, install};
use serde_json::Value;
use wasmhooks::WouldDeny;
use wasmhooks::config::HookMode;

const PROTECTED: &str = "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n";

#[tokio::test]
async fn a_gate_in_monitor_mode_reports_its_veto_and_lets_the_call_go() {
    let dir = tempfile::tempdir().unwrap();
    let monitor = format!("mode = \"monitor\"\n{PROTECTED}");
    install(dir.path(), "trial", "deny", Some(&monitor));
    let engine = engine(dir.path()).await;

    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert!(verdict.allowed, "{verdict:?}");
    assert_eq!(verdict.denied_by, None);
    let [WouldDeny { hook, reason }] = &verdict.would_deny[..] else {
        panic!("one would-be veto: {verdict:?}");
    };
    assert_eq!(hook, "trial");
    assert!(reason.contains("0a9b8c7d"), "{reason}");
    // A call it would not veto has no would_deny.
    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(
        verdict.allowed && verdict.would_deny.is_empty(),
        "{verdict:?}"
    );

    // Next to an enforcing gate: that one decides, the trial is reported.
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "trial", "deny", Some(&monitor));
    install(dir.path(), "gate", "deny", Some(PROTECTED));
    let engine = crate::engine(dir.path()).await;
    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert!(!verdict.allowed);
    assert_eq!(verdict.denied_by.as_deref(), Some("gate"));
    assert_eq!(verdict.would_deny.len(), 1, "{verdict:?}");

    let status = |name: &str| engine.hooks().into_iter().find(|h| h.name == name).unwrap();
    let trial = status("trial");
    assert_eq!(trial.mode, Some(HookMode::Monitor));
    assert_eq!((trial.would_deny, trial.denials), (1, 0));
    let gate = status("gate");
    assert_eq!(gate.mode, Some(HookMode::Enforce));
    assert_eq!((gate.would_deny, gate.denials), (0, 1));
    let metrics = engine.metrics().await.unwrap();
    assert!(
        metrics.contains("wasmhooks_hook_would_deny_total{hook=\"trial\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmhooks_hook_denials_total{hook=\"gate\"} 1"),
        "{metrics}"
    );

    // Over HTTP, as the XO plugin sees it.
    let base = crate::server::serve(engine).await;
    let answer: Value = crate::json_of(
        reqwest::Client::new()
            .post(format!("{base}/v1/events"))
            .body(fixture_bytes("vm.delete.pre")),
    )
    .await;
    assert_eq!(answer["allowed"], false);
    assert_eq!(answer["would_deny"][0]["hook"], "trial");
}
