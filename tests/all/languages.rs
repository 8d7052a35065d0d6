//! The example hooks in languages other than Rust (`guest-examples/LANG/`),
//! each built from source with the project's guest toolchains
//! (`scripts/install-guest-toolchains.sh`) and run in the engine on fixture
//! events, checked at a real receiver.

use crate::{Receiver, fixture, fixture_json, guests};
use wasmhooks::{Abi, Engine, HookState, Stage};

/// An engine serving `guest-examples/LANG`'s hook as `name`, with `toml`.
async fn lang_hook(
    lang: &str,
    tools: &[&str],
    name: &str,
    toml: &str,
) -> (tempfile::TempDir, Engine) {
    crate::one_hook_file(name, &guests::example(lang, tools), toml).await
}

/// The Slack message text each `slack` example sends for these fixtures.
const SLACK_TEXTS: [(&str, &str); 3] = [
    (
        "vm.start.post",
        "alice@example.org called vm.start on VM 1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21: succeeded in 5608 ms",
    ),
    (
        "vm.migrate.post.error",
        "alice@example.org called vm.migrate on VM 1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21: failed: no such object",
    ),
    (
        "vm.start.pre",
        "alice@example.org called vm.start on VM 1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21: requested",
    ),
];

async fn slack_sends_the_same_messages_as_the_rust_one(lang: &str, tools: &[&str]) {
    let receiver = Receiver::start().await;
    let toml = format!("[settings]\nurl = \"{}\"\n", receiver.url("/slack"));
    let (_dir, engine) = lang_hook(lang, tools, "slack", &toml).await;
    assert_eq!(
        engine.hooks()[0].state,
        HookState::Live,
        "{:?}",
        engine.hooks()
    );

    for (name, _) in SLACK_TEXTS {
        let event = fixture(name);
        if name.ends_with(".pre") {
            let verdict = engine.pre(event).await.unwrap();
            assert!(
                verdict.allowed && verdict.failures.is_empty(),
                "{verdict:?}"
            );
        } else {
            engine.post(event).await.unwrap();
        }
    }
    let got = receiver.wait_for(SLACK_TEXTS.len()).await;
    let mut texts: Vec<String> = got
        .iter()
        .map(|r| {
            assert_eq!(r.path, "/slack");
            assert_eq!(r.header("content-type"), "application/json");
            r.json()["text"]
                .as_str()
                .expect("a message has text")
                .to_owned()
        })
        .collect();
    texts.sort();
    let mut want: Vec<String> = SLACK_TEXTS.iter().map(|(_, t)| t.to_string()).collect();
    want.sort();
    assert_eq!(texts, want);
}

async fn slack_refuses_settings_without_a_url(lang: &str, tools: &[&str]) {
    let (_dir, engine) = lang_hook(lang, tools, "slack", "[settings]\nchannel = \"ops\"\n").await;
    let status = &engine.hooks()[0];
    assert_eq!(status.state, HookState::Failed, "{status:?}");
    let error = status.last_error.as_ref().expect("a load error");
    assert_eq!(error.stage, Stage::Setup, "{error:?}");
    assert_eq!(error.hook, "slack");
    assert!(
        error.reason.contains("url"),
        "the error names the setting: {error:?}"
    );
}

/// `extra` is appended to each `deny.toml` (a command hook's subscription).
async fn deny_vetoes_only_protected_vms(lang: &str, tools: &[&str], extra: &str) {
    let protected = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";
    let toml = format!("[settings]\nprotected = [\"{protected}\"]\n{extra}");
    let (_dir, engine) = lang_hook(lang, tools, "deny", &toml).await;

    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert!(!verdict.allowed, "{verdict:?}");
    assert_eq!(verdict.denied_by.as_deref(), Some("deny"));
    assert_eq!(
        verdict.reason.as_deref(),
        Some(format!("VM {protected} is protected: vm.delete refused by the deny hook").as_str())
    );
    let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
    assert!(verdict.allowed, "vm.start is not subscribed: {verdict:?}");

    let toml = format!("[settings]\nprotected = [\"another-vm\"]\n{extra}");
    let (_dir, engine) = lang_hook(lang, tools, "deny", &toml).await;
    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert!(
        verdict.allowed && verdict.failures.is_empty(),
        "{verdict:?}"
    );
}

async fn forward_posts_post_events_unchanged_for_its_methods(lang: &str, tools: &[&str]) {
    let receiver = Receiver::start().await;
    let toml = format!(
        "[settings]\nurl = \"{}\"\nmethods = [\"vm.*\", \"backupNg.runJob\"]\n",
        receiver.url("/ci")
    );
    let (_dir, engine) = lang_hook(lang, tools, "forward", &toml).await;
    let status = &engine.hooks()[0];
    assert_eq!(status.state, HookState::Live, "{status:?}");
    assert_eq!(status.abi, Some(Abi::Component));

    engine.pre(fixture("vm.start.pre")).await.unwrap(); // phase not subscribed
    engine.post(fixture("token.create.post")).await.unwrap(); // method not subscribed
    engine.post(fixture("vm.start.post")).await.unwrap();
    engine.post(fixture("backupNg.runJob.post")).await.unwrap();
    let mut got = receiver.wait_for(2).await;
    engine.drain().await;
    assert_eq!(receiver.received().len(), 2, "{:?}", receiver.received());
    got.sort_by_key(|r| r.json()["method"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0].path, "/ci");
    assert_eq!(got[0].json(), fixture_json("backupNg.runJob.post"));
    assert_eq!(got[1].json(), fixture_json("vm.start.post"));

    let (_dir, engine) = lang_hook(lang, tools, "forward", "[settings]\nurl = \"ftp://x\"\n").await;
    let error = crate::load_error(&engine);
    assert_eq!(error.stage, Stage::Setup, "{error:?}");
    assert!(error.reason.contains("url"), "{error:?}");
}

/// The `filter` example as a WASI command hook: pages post events that
/// carry an `error`, skips the rest.
async fn filter_pages_only_failed_post_events(lang: &str, tools: &[&str]) {
    let receiver = Receiver::start().await;
    let toml = format!(
        "[settings]\nurl = \"{}\"\n[subscription]\nmethods = [\"*\"]\nphases = [\"post\"]\n",
        receiver.url("/pager")
    );
    let (_dir, engine) = lang_hook(lang, tools, "filter", &toml).await;
    let status = &engine.hooks()[0];
    assert_eq!(status.state, HookState::Live, "{status:?}");
    assert_eq!(status.abi, Some(Abi::Command));

    engine.post(fixture("vm.start.post")).await.unwrap(); // succeeded: skipped
    engine.post(fixture("vm.migrate.post.error")).await.unwrap();
    let got = receiver.wait_for(1).await;
    engine.drain().await;
    assert_eq!(receiver.received().len(), 1, "{:?}", receiver.received());
    assert_eq!(got[0].path, "/pager");
    assert_eq!(got[0].json(), fixture_json("vm.migrate.post.error"));
    let status = &engine.hooks()[0];
    assert_eq!((status.calls, status.errors), (2, 0), "{status:?}");

    // Without a URL it reports an error (`{"error": …}` on stdout) per event.
    let toml = "[settings]\n[subscription]\nmethods = [\"*\"]\nphases = [\"post\"]\n";
    let (_dir, engine) = lang_hook(lang, tools, "filter", toml).await;
    engine.post(fixture("vm.migrate.post.error")).await.unwrap();
    engine.drain().await;
    let status = &engine.hooks()[0];
    assert_eq!((status.calls, status.errors), (1, 1), "{status:?}");

    // A command hook must say what it subscribes to.
    let (_dir, engine) = lang_hook(
        lang,
        tools,
        "filter",
        "[settings]\nurl = \"https://x.example\"\n",
    )
    .await;
    let error = crate::load_error(&engine);
    assert_eq!(error.stage, Stage::Setup, "{error:?}");
    assert!(error.file.ends_with("filter.toml"), "{error:?}");
    assert!(error.reason.contains("[subscription]"), "{error:?}");
}

const PYTHON: &[&str] = &["componentize-py"];
const ZIG: &[&str] = &["zig"];
const ASSEMBLYSCRIPT: &[&str] = &["asc"];
const C: &[&str] = &["clang", "wit-bindgen", "wasm-tools"];
const JS: &[&str] = &["jco"];
const GO: &[&str] = &["go", "wit-bindgen", "wasm-tools"];

#[tokio::test]
async fn python_slack() {
    slack_sends_the_same_messages_as_the_rust_one("python", PYTHON).await;
    slack_refuses_settings_without_a_url("python", PYTHON).await;
}

#[tokio::test]
async fn go_slack() {
    slack_sends_the_same_messages_as_the_rust_one("go", GO).await;
    slack_refuses_settings_without_a_url("go", GO).await;

    // A Go instance cannot be reused: `[reuse]` is refused at load, naming
    // the .toml, rather than failing now and then at run time.
    let toml = "[reuse]\nevents = 100\n[settings]\nurl = \"https://x.example\"\n";
    let (_dir, engine) = lang_hook("go", GO, "slack", toml).await;
    let error = crate::load_error(&engine);
    assert_eq!(error.stage, Stage::Setup, "{error:?}");
    assert!(error.file.ends_with("slack.toml"), "{error:?}");
    assert!(error.reason.contains("Go"), "{error:?}");
}

#[tokio::test]
async fn js_deny() {
    deny_vetoes_only_protected_vms("js", JS, "").await;
}

#[tokio::test]
async fn c_forward() {
    forward_posts_post_events_unchanged_for_its_methods("c", C).await;
}

#[tokio::test]
async fn zig_filter_as_a_wasi_command() {
    filter_pages_only_failed_post_events("zig", ZIG).await;
}

#[tokio::test]
async fn assemblyscript_deny_as_a_wasi_command() {
    let subscription =
        "[subscription]\nmethods = [\"vm.delete\", \"vm.stop\"]\nphases = [\"pre\"]\n";
    deny_vetoes_only_protected_vms("assemblyscript", ASSEMBLYSCRIPT, subscription).await;
}

/// The command ABI with a `wasi:cli/command` component (a Rust binary for
/// wasm32-wasip2): the event on stdin, the settings and nothing else in the
/// environment, the outcome on stdout; a non-zero exit and output that is
/// not an outcome are failures that say so.
#[tokio::test]
async fn a_command_component_gets_the_event_on_stdin_and_its_settings_in_env() {
    let receiver = Receiver::start().await;
    let subscription = "[subscription]\nmethods = [\"vm.*\"]\nphases = [\"pre\", \"post\"]\n";
    let toml = format!(
        "[settings]\nurl = \"{}\"\n{subscription}",
        receiver.url("/cmd")
    );
    let (_dir, engine) = crate::one_hook("cmd", "command", &toml).await;
    assert_eq!(
        engine.hooks()[0].state,
        HookState::Live,
        "{:?}",
        engine.hooks()
    );

    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, "/cmd");
    assert_eq!(got[0].header("x-hook"), "command");
    let body = got[0].json();
    let event = fixture_json("vm.start.post");
    assert_eq!(body["method"], "vm.start");
    assert_eq!(body["phase"], "post");
    assert_eq!(body["call_id"], event["callId"]);
    assert_eq!(body["timestamp_ms"], event["timestamp"]);
    assert_eq!(
        body["payload_method"], "vm.start",
        "the payload is embedded as JSON"
    );
    assert_eq!(body["settings"]["url"], receiver.url("/cmd"));
    assert_eq!(body["args"], serde_json::json!(["cmd"]));
    assert_eq!(
        body["env"],
        serde_json::json!(["WASMHOOKS_SETTINGS"]),
        "nothing else of the host's environment"
    );

    // (WASI 0.2's exit carries only success or failure: status 3 arrives as 1.)
    for (mode, says) in [
        (
            "exit",
            "exited with status 1; its stderr ends: command hook: giving up on \"vm.start\"",
        ),
        ("garbage", "not an outcome"),
    ] {
        let toml = format!("[settings]\nmode = \"{mode}\"\n{subscription}");
        let (_dir, engine) = crate::one_hook("cmd", "command", &toml).await;
        let verdict = engine.pre(fixture("vm.start.pre")).await.unwrap();
        assert!(verdict.allowed, "on_error defaults to allow: {verdict:?}");
        let failure = &verdict.failures[0];
        assert_eq!(failure.hook, "cmd");
        assert!(failure.message.contains(says), "{mode}: {failure:?}");
        assert_eq!(engine.hooks()[0].errors, 1);
    }
}

/// The examples' folders each have a README with the install and build commands.
#[test]
fn every_language_example_documents_its_toolchain() {
    for lang in ["python", "js", "c", "go", "zig", "assemblyscript"] {
        let readme = guests::root().join(format!("guest-examples/{lang}/README.md"));
        let text = std::fs::read_to_string(&readme)
            .unwrap_or_else(|e| panic!("{}: {e}", readme.display()));
        for needle in ["scripts/install-guest-toolchains.sh", "build.sh"] {
            assert!(
                text.contains(needle),
                "{} lacks {needle:?}",
                readme.display()
            );
        }
    }
}
