//! Each example hook of `guest-examples/rust`, run in the engine on a
//! fixture event, checked at a real receiver.

use crate::{Receiver, fixture, fixture_json, one_hook};
use wasmhooks::HookState;

#[tokio::test]
async fn forward_posts_the_event_unchanged_for_its_methods_and_phases() {
    let receiver = Receiver::start().await;
    let toml = format!(
        "[settings]\nurl = \"{}\"\nmethods = [\"vm.*\"]\nphases = [\"post\"]\n",
        receiver.url("/xo")
    );
    let (_dir, engine) = one_hook("forward", "forward", &toml).await;

    engine.pre(fixture("vm.start.pre")).await.unwrap(); // phase not subscribed
    engine.post(fixture("backupNg.runJob.post")).await.unwrap(); // method not subscribed
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    engine.drain().await;

    let got_all = receiver.received();
    assert_eq!(
        got_all.len(),
        1,
        "only vm.* post events are forwarded: {got_all:?}"
    );
    assert_eq!(got[0].path, "/xo");
    assert_eq!(got[0].header("content-type"), "application/json");
    assert!(got[0].header("webhook-id").starts_with("msg_"));
    assert_eq!(got[0].json(), fixture_json("vm.start.post"));
    let status = &engine.hooks()[0];
    assert_eq!(status.calls, 1, "unsubscribed events cost no WASM call");
}

#[tokio::test]
async fn slack_names_user_method_vm_and_outcome() {
    let receiver = Receiver::start().await;
    let (_dir, engine) = one_hook(
        "slack",
        "slack",
        &format!("[settings]\nurl = \"{}\"\n", receiver.url("/slack")),
    )
    .await;

    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, "/slack");
    assert_eq!(got[0].header("content-type"), "application/json");
    let text = got[0].json()["text"]
        .as_str()
        .expect("a Slack message has text")
        .to_owned();
    for part in [
        "alice@example.org",
        "vm.start",
        "1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21",
        "succeeded",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }

    engine.post(fixture("vm.migrate.post.error")).await.unwrap();
    let got = receiver.wait_for(2).await;
    let text = got[1].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains("no such object"),
        "{text:?} names the failure"
    );
}

#[tokio::test]
async fn teams_sends_a_message_card_with_one_fact_per_field() {
    let receiver = Receiver::start().await;
    let (_dir, engine) = one_hook(
        "teams",
        "teams",
        &format!("[settings]\nurl = \"{}\"\n", receiver.url("/teams")),
    )
    .await;

    engine.post(fixture("vm.migrate.post.error")).await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, "/teams");
    let card = got[0].json();
    assert_eq!(card["@type"], "MessageCard");
    let facts = card["sections"][0]["facts"].as_array().expect("facts");
    let event = fixture_json("vm.migrate.post.error");
    assert_eq!(
        facts.len(),
        event.as_object().unwrap().len(),
        "one fact per event field"
    );
    let fact = |name: &str| {
        facts
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no {name} fact"))["value"]
            .clone()
    };
    assert_eq!(fact("method"), "vm.migrate");
    assert_eq!(fact("userName"), "alice@example.org");
    assert!(fact("error").as_str().unwrap().contains("no such object"));
}

#[tokio::test]
async fn filter_pages_only_failed_post_events() {
    let receiver = Receiver::start().await;
    let (_dir, engine) = one_hook(
        "filter",
        "filter",
        &format!("[settings]\nurl = \"{}\"\n", receiver.url("/pager")),
    )
    .await;

    engine.post(fixture("vm.start.post")).await.unwrap();
    engine.post(fixture("vm.migrate.post.error")).await.unwrap();
    engine.post(fixture("vm.create.post")).await.unwrap();
    engine.drain().await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "only the failed event is paged: {got:?}");
    assert_eq!(got[0].path, "/pager");
    assert_eq!(got[0].json(), fixture_json("vm.migrate.post.error"));
}

#[tokio::test]
async fn deny_vetoes_deleting_a_protected_vm() {
    let (_dir, engine) = one_hook(
        "deny",
        "deny",
        "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n",
    )
    .await;

    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert!(!verdict.allowed);
    assert_eq!(verdict.denied_by.as_deref(), Some("deny"));
    assert!(
        verdict
            .reason
            .unwrap()
            .contains("0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d")
    );

    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(verdict.allowed, "vm.start is not vetoed: {verdict:?}");
}

#[tokio::test]
async fn deny_lets_unprotected_vms_go() {
    let (_dir, engine) =
        one_hook("deny", "deny", "[settings]\nprotected = [\"another-vm\"]\n").await;
    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert!(verdict.allowed, "{verdict:?}");
    assert_eq!(engine.hooks()[0].state, HookState::Live);
}

#[tokio::test]
async fn fanout_sends_a_cmdb_record_and_a_billing_record() {
    let receiver = Receiver::start().await;
    let toml = format!(
        "[settings]\ncmdb_url = \"{}\"\nbilling_url = \"{}\"\n",
        receiver.url("/cmdb"),
        receiver.url("/billing")
    );
    let (_dir, engine) = one_hook("fanout", "fanout", &toml).await;

    engine.post(fixture("vm.create.post")).await.unwrap();
    let mut got = receiver.wait_for(2).await;
    got.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(got[0].path, "/billing");
    assert_eq!(got[1].path, "/cmdb");
    let vm = "6d1f3b5a-7c9e-4b2d-8f0a-1e3c5b7d9f2a";
    assert_eq!(got[1].json()["vm_id"], vm);
    assert_eq!(got[1].json()["name"], "build-runner-42");
    assert_eq!(got[0].json()["vm_id"], vm);
    assert_eq!(
        got[0].json()["customer"],
        "8a2f6c4e-1d3b-4f5a-9e7c-6b0d2a4f8c13"
    );
    assert_ne!(
        got[0].header("webhook-id"),
        got[1].header("webhook-id"),
        "each delivery has its own id"
    );
}

#[tokio::test]
async fn token_results_are_redacted_before_hooks_see_them() {
    let receiver = Receiver::start().await;
    let (_dir, engine) = one_hook(
        "forward",
        "forward",
        &format!("[settings]\nurl = \"{}\"\n", receiver.url("/xo")),
    )
    .await;
    engine.post(fixture("token.create.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    let body = got[0].json();
    assert_eq!(body["result"], "* obfuscated *");
    assert_eq!(body["params"], fixture_json("token.create.post")["params"]);
}
