//! The archive and `wasmhooks simulate`: 2,000 events of a mix of XO
//! methods, some on protected VMs, recorded through `wasmhooks serve` with
//! the deny and fanout examples live. Then, with that engine stopped, new
//! versions are replayed over its archive: a stricter deny, a fanout that
//! drops a receiver, a hook that loops on one method. Each report is
//! checked against counts made here from the events sent, and nothing
//! reaches a receiver meanwhile. The archive is exported as fixtures, and
//! `POST /v1/simulate` runs on an engine serving the same state.

use crate::{Receiver, Serve, install, wasm};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

/// Protected by the live deny.
const A: &str = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";
/// Protected by the stricter one only.
const B: &str = "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908";
const CALLS: usize = 1000;

/// Call `i`'s method: a mix, every tenth a snapshot, a create, a delete…
fn method(i: usize) -> &'static str {
    [
        "vm.start",
        "vm.stop",
        "vm.delete",
        "vm.create",
        "vm.snapshot",
        "vm.migrate",
        "vm.start",
        "vm.clone",
        "vm.stop",
        "vm.delete",
    ][i % 10]
}

/// The VM call `i` is about: one in seven is A, one in seven B.
fn vm(i: usize) -> String {
    match i % 7 {
        0 => A.to_owned(),
        1 => B.to_owned(),
        _ => format!("{i:08x}-0000-4000-8000-{i:012x}"),
    }
}

/// Whether call `i` is a `vm.create` that failed (the fanout skips those).
fn failed_create(i: usize) -> bool {
    method(i) == "vm.create" && i % 4 == 3
}

/// The pre and post event of each call: 2,000 events.
fn events() -> Vec<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut events = Vec::new();
    for i in 0..CALLS {
        let mut params = match method(i) {
            "vm.create" => json!({"name_label": format!("vm-{i}"), "template": "t-1"}),
            _ => json!({"id": vm(i)}),
        };
        if i == 0 {
            params["token"] = json!("s3cret-token"); // masked in the archive
        }
        let pre = json!({
            "callId": format!("call-{i}"),
            "userId": format!("user-{}", i % 5),
            "userName": format!("user{}@example.org", i % 5),
            "method": method(i),
            "params": params,
            "timestamp": now,
            "type": "pre",
        });
        let mut post = pre.clone();
        post["type"] = json!("post");
        post["duration"] = json!(5);
        if failed_create(i) {
            post["error"] =
                json!({"code": 10, "message": "no space left", "name": "XoError", "stack": ""});
        } else if method(i) == "vm.create" {
            post["result"] = json!(format!("{i:08x}-1111-4000-8000-{i:012x}"));
        } else {
            post["result"] = json!(true);
        }
        events.push(pre);
        events.push(post);
    }
    events
}

/// Pre events the deny example refuses with `protected = [id]`: its
/// methods (vm.delete, vm.stop) on that VM.
fn denied_with(id: &str) -> usize {
    (0..CALLS)
        .filter(|&i| matches!(method(i), "vm.delete" | "vm.stop") && vm(i) == id)
        .count()
}

fn wasmhooks(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .args(args)
        .args(["--state", ".state", "--config", "engine.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wasmhooks {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `wasmhooks simulate ARGS --json`, read back.
fn simulate(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["simulate"];
    all.extend(args);
    all.extend(["--since", "1h", "--json"]);
    serde_json::from_slice(&wasmhooks(dir, &all).stdout).unwrap()
}

fn receiver_of(r: &Receiver) -> String {
    format!("127.0.0.1:{}", r.addr.port())
}

/// A hooks folder in `dir/hooks` with the live deny (protecting A), and
/// the engine's settings in `dir/engine.toml`: `engine` plus an archive.
fn live_deny(dir: &Path, engine: &str) -> std::path::PathBuf {
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    install(
        &hooks,
        "deny",
        "deny",
        Some(&format!("[settings]\nprotected = [\"{A}\"]\n")),
    );
    std::fs::write(
        dir.join("engine.toml"),
        format!(
            "dedup_window_secs = 0\n{engine}[limits]\ndeadline_ms = 5000\n[archive]\ndays = 1\n"
        ),
    )
    .unwrap();
    hooks
}

#[tokio::test(flavor = "multi_thread")]
async fn simulations_report_what_new_versions_would_change_and_send_nothing() {
    let cmdb = Receiver::start().await;
    let billing = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let hooks = live_deny(
        dir,
        "fsync = false\n[delivery]\nallow_hosts = [\"127.0.0.1\"]\n",
    );
    install(
        &hooks,
        "fanout",
        "fanout",
        Some(&format!(
            "[settings]\ncmdb_url = \"{}\"\nbilling_url = \"{}\"\n",
            cmdb.url("/cmdb"),
            billing.url("/billing")
        )),
    );

    // 2,000 events through the engine, 8 at a time; and a token XO
    // created, which no hook wants (its result is a secret).
    let serve = Serve::start(&hooks, &dir.join(".state"), &dir.join("engine.toml"));
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/events", serve.addr);
    let mut events = events();
    let mut token = crate::fixture_json("token.create.post");
    token["callId"] = json!("call-token");
    let secret = token["result"].as_str().unwrap().to_owned();
    events.push(token);
    let statuses: Vec<u16> = futures::stream::iter(&events)
        .map(|e| {
            let request = client.post(&url).json(e);
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 202),
        "every event accepted: {statuses:?}"
    );
    let creates = (0..CALLS)
        .filter(|&i| method(i) == "vm.create" && !failed_create(i))
        .count();
    cmdb.wait_for(creates).await;
    billing.wait_for(creates).await;
    assert!(serve.terminate().success());
    let received = (cmdb.received().len(), billing.received().len());

    // The archive, exported: every event, masked, with what each hook did.
    let out = wasmhooks(dir, &["events", "export", "--since", "1h"]);
    let archived: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(archived.len(), 2 * CALLS + 1);
    let token = archived
        .iter()
        .find(|a| a["call_id"] == "call-token")
        .unwrap();
    assert_eq!(token["event"]["result"], "* obfuscated *");
    assert!(!serde_json::to_string(&archived).unwrap().contains(&secret));
    let live_denied = archived.iter().filter(|a| a["denied_by"] == "deny").count();
    assert_eq!(live_denied, denied_with(A));
    let first = archived
        .iter()
        .find(|a| a["call_id"] == "call-0" && a["phase"] == "pre")
        .unwrap();
    assert_eq!(first["event"]["params"]["token"], "* masked *");
    assert_eq!(first["event"]["params"]["id"], A);
    wasmhooks::Event::from_value(first["event"].clone()).expect("a fixture as it is");
    let delivered = archived
        .iter()
        .filter_map(|a| a["hooks"].as_array())
        .flatten()
        .filter(|h| h["hook"] == "fanout")
        .filter_map(|h| h["receivers"][receiver_of(&billing)].as_u64())
        .sum::<u64>();
    assert_eq!(
        delivered, creates as u64,
        "the live fanout's receivers archived"
    );

    let new = dir.join("new");
    std::fs::create_dir_all(&new).unwrap();
    // A stricter deny: exactly the B events are newly refused.
    install(
        &new,
        "deny",
        "deny",
        Some(&format!("[settings]\nprotected = [\"{A}\", \"{B}\"]\n")),
    );
    let r = simulate(dir, &["new/deny.wasm", "--as", "deny"]);
    assert_eq!(r["events"], 2 * CALLS + 1);
    assert_eq!(r["newly_denied"]["count"], denied_with(B), "{r:#}");
    assert_eq!(r["newly_allowed"]["count"], 0);
    assert_eq!(r["live_denied"], denied_with(A));
    assert_eq!(r["denied"], denied_with(A) + denied_with(B));
    let example = &r["newly_denied"]["examples"][0];
    assert_eq!(example["object"], B);
    assert!(matches!(
        example["method"].as_str(),
        Some("vm.delete" | "vm.stop")
    ));
    assert!(example["user"].as_str().unwrap().ends_with("@example.org"));
    assert!(example["reason"].as_str().unwrap().contains(B), "{example}");
    let deletes = r["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"] == "vm.delete" && m["phase"] == "pre")
        .unwrap();
    let b_deletes = (0..CALLS)
        .filter(|&i| method(i) == "vm.delete" && vm(i) == B)
        .count();
    assert_eq!(deletes["newly_denied"], b_deletes);
    assert_eq!(deletes["events"], CALLS / 5);
    assert!(r["failures"].as_array().unwrap().is_empty(), "{r:#}");
    // The text report says the same.
    let out = wasmhooks(
        dir,
        &["simulate", "new/deny.wasm", "--as", "deny", "--since", "1h"],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("newly denied: {}", denied_with(B))),
        "{text}"
    );

    // A fanout that sends billing's record to the CMDB: billing drops all
    // of its deliveries, the CMDB gets them.
    install(
        &new,
        "fanout",
        "fanout",
        Some(&format!(
            "[settings]\ncmdb_url = \"{0}\"\nbilling_url = \"{0}\"\n",
            cmdb.url("/billing")
        )),
    );
    let r = simulate(dir, &["new/fanout.wasm"]);
    let change = |receiver: &Receiver| {
        r["receivers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["receiver"] == receiver_of(receiver))
            .cloned()
            .unwrap_or_else(|| panic!("{r:#}"))
    };
    assert_eq!(
        change(&billing),
        json!({"receiver": receiver_of(&billing), "live": creates, "new": 0})
    );
    assert_eq!(
        change(&cmdb),
        json!({"receiver": receiver_of(&cmdb), "live": creates, "new": 2 * creates})
    );
    assert_eq!(r["newly_denied"]["count"], 0);

    // A hook that loops on snapshots: each one a timeout, on that method.
    std::fs::copy(wasm("misbehave"), new.join("looper.wasm")).unwrap();
    std::fs::write(
        new.join("looper.toml"),
        "deadline_ms = 50\non_error = \"deny\"\n[settings]\nmode = \"loop\"\nmethods = [\"vm.snapshot\"]\n",
    )
    .unwrap();
    let r = simulate(dir, &["new/looper.wasm", "--as", "deny"]);
    let snapshots = 2 * (0..CALLS).filter(|&i| method(i) == "vm.snapshot").count();
    assert_eq!(r["called"], snapshots);
    assert_eq!(
        r["failures"],
        json!([{
            "kind": "timeout",
            "method": "vm.snapshot",
            "count": snapshots,
            "message": r["failures"][0]["message"],
        }]),
    );
    let message = r["failures"][0]["message"].as_str().unwrap();
    assert!(message.contains("looper"), "{message}");
    for phase in ["pre", "post"] {
        let m = r["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["method"] == "vm.snapshot" && m["phase"] == phase)
            .unwrap();
        assert_eq!(m["timeouts"], snapshots / 2);
    }
    assert!(r["time"]["p50_ms"].as_f64().unwrap() >= 50.0, "{r:#}");
    // Its failures veto (on_error = "deny"): each snapshot is newly
    // refused, and what the live deny refused is newly allowed.
    assert_eq!(r["denied"], snapshots / 2);
    assert_eq!(r["newly_denied"]["count"], snapshots / 2);
    assert_eq!(r["newly_allowed"]["count"], denied_with(A));
    let allowed = &r["newly_allowed"]["examples"][0];
    assert_eq!(allowed["object"], A);
    assert!(
        allowed["reason"].as_str().unwrap().contains("protected"),
        "{allowed}"
    );

    // Nothing reached a receiver during the simulations.
    assert_eq!((cmdb.received().len(), billing.received().len()), received);

    // The same through a running engine: the live version itself changes
    // nothing; a body that is not a hook for these settings is refused.
    let serve = Serve::start(&hooks, &dir.join(".state"), &dir.join("engine.toml"));
    let simulate_url = format!("http://{}/v1/simulate?as=deny&hours=1", serve.addr);
    let answer = client
        .post(&simulate_url)
        .header("content-type", "application/wasm")
        .body(std::fs::read(hooks.join("deny.wasm")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let r: Value = answer.json().await.unwrap();
    assert!(r["events"].as_u64().unwrap() >= 2 * CALLS as u64);
    assert_eq!(r["newly_denied"]["count"], 0, "{r:#}");
    assert_eq!(r["newly_allowed"]["count"], 0);
    assert_eq!(
        r["live_versions"],
        json!([r["version"]]),
        "the same version"
    );
    let answer = client
        .post(&simulate_url)
        .body(std::fs::read(wasm("misbehave")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let error = answer.json::<Value>().await.unwrap()["error"].to_string();
    assert!(error.contains("setup"), "{error}");
    assert_eq!((cmdb.received().len(), billing.received().len()), received);
}

/// On NATS JetStream the archive is a stream that every engine of the
/// queue writes to: recorded through `serve`, exported and simulated
/// through the same `--queue`.
#[tokio::test(flavor = "multi_thread")]
async fn the_archive_lives_on_jetstream_with_the_queue() {
    let nats = crate::nats_server::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let hooks = live_deny(dir, "");
    let queue = ["--queue", nats.url.as_str()];
    let serve = Serve::start_with(
        &hooks,
        &dir.join(".state"),
        &dir.join("engine.toml"),
        &queue,
    );
    let client = reqwest::Client::new();
    let calls = 70;
    for event in events().iter().take(2 * calls) {
        let status = client
            .post(format!("http://{}/v1/events", serve.addr))
            .json(event)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}");
    }
    assert!(serve.terminate().success());
    let mut export = vec!["events", "export", "--since", "1h", "--phase", "pre"];
    export.extend(queue);
    let out = wasmhooks(dir, &export);
    let lines = String::from_utf8(out.stdout).unwrap();
    assert_eq!(lines.lines().count(), calls, "{lines}");
    let new = dir.join("new");
    std::fs::create_dir_all(&new).unwrap();
    install(
        &new,
        "deny",
        "deny",
        Some(&format!("[settings]\nprotected = [\"{A}\", \"{B}\"]\n")),
    );
    let mut args = vec!["new/deny.wasm"];
    args.extend(queue);
    let r = simulate(dir, &args);
    let newly = (0..calls)
        .filter(|&i| matches!(method(i), "vm.delete" | "vm.stop") && vm(i) == B)
        .count();
    assert!(newly > 0);
    assert_eq!(r["events"], 2 * calls);
    assert_eq!(r["newly_denied"]["count"], newly, "{r:#}");
}
