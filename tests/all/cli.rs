//! The `wasmhooks` binary: `run` (dry run) and `check`.

use crate::{install, root, wasm};
use std::process::Command;

fn wasmhooks() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
}

#[test]
fn run_prints_subscription_match_and_outcome_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("fanout.toml");
    // Port 9 (discard) on loopback: nothing listens, and nothing must be sent.
    std::fs::write(&settings, "[settings]\ncmdb_url = \"http://127.0.0.1:9/cmdb\"\nbilling_url = \"http://127.0.0.1:9/billing\"\n").unwrap();
    let out = wasmhooks()
        .arg("run")
        .arg(wasm("fanout"))
        .arg("--event")
        .arg(root().join("tests/fixtures/xo/vm.create.post.json"))
        .arg("--settings")
        .arg(&settings)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["hook"], "fanout");
    assert_eq!(result["matches"], true);
    assert_eq!(
        result["subscription"]["methods"],
        serde_json::json!(["vm.create"])
    );
    let deliveries = result["outcome"]["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0]["url"], "http://127.0.0.1:9/cmdb");
    assert_eq!(
        deliveries[0]["body"]["vm_id"],
        "6d1f3b5a-7c9e-4b2d-8f0a-1e3c5b7d9f2a"
    );

    let out = wasmhooks()
        .arg("run")
        .arg(wasm("fanout"))
        .arg("--event")
        .arg(root().join("tests/fixtures/xo/vm.start.pre.json"))
        .arg("--settings")
        .arg(&settings)
        .output()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["matches"], false);
    assert!(result["outcome"].is_null());
}

#[test]
fn run_explains_a_bad_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"callId":"c","type":"pre","timestamp":1}"#).unwrap();
    let out = wasmhooks()
        .arg("run")
        .arg(wasm("deny"))
        .arg("--event")
        .arg(&event)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("event.json") && stderr.contains("`method`"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_short_token_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let out = wasmhooks()
        .args(["serve", "--listen", "127.0.0.1:0", "--hooks"])
        .arg(dir.path())
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("WASMHOOKS_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WASMHOOKS_TOKEN") && stderr.contains("16 characters"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("short"),
        "the token is not echoed: {stderr}"
    );
}

#[test]
fn serve_refuses_bad_trace_settings_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["--otlp-endpoint", "grpc://collector:4317"],
            &["--otlp-endpoint", "gRPC is not supported"],
        ),
        (
            &["--otlp-endpoint", "collector"],
            &["--otlp-endpoint", "not a URL"],
        ),
        (&["--trace-sample", "2"], &["--trace-sample", "from 0 to 1"]),
    ];
    for (args, says) in cases {
        let out = wasmhooks()
            .args(["serve", "--listen", "127.0.0.1:0", "--hooks"])
            .arg(dir.path())
            .arg("--state")
            .arg(dir.path().join("state"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for said in says {
            assert!(stderr.contains(said), "{args:?}: {said} in {stderr}");
        }
    }
}

/// `secret = "env:NAME"` reads the engine's environment at load.
#[test]
fn a_secret_from_the_environment_is_read_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "secret = \"env:SIGNING_SECRET\"\n[settings]\nprotected = []\n";
    install(dir.path(), "deny", "deny", Some(toml));
    let check = |secret: Option<&str>| {
        let mut command = wasmhooks();
        command
            .arg("check")
            .arg(dir.path())
            .env_remove("SIGNING_SECRET");
        if let Some(secret) = secret {
            command.env("SIGNING_SECRET", secret);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, stdout) = check(Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    assert!(ok, "{stdout}");
    let (ok, stdout) = check(None);
    assert!(
        !ok && stdout.contains("SIGNING_SECRET is not set"),
        "{stdout}"
    );
    let (ok, stdout) = check(Some("not-a-secret"));
    assert!(!ok && stdout.contains("secret"), "{stdout}");
}

#[test]
fn check_prints_a_table_and_fails_on_a_broken_hook() {
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "deny",
        "deny",
        Some("[settings]\nprotected = []\n"),
    );
    let out = wasmhooks().arg("check").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("deny") && stdout.contains("ok") && stdout.contains("vm.delete"),
        "{stdout}"
    );

    std::fs::write(dir.path().join("broken.wasm"), b"garbage").unwrap();
    let out = wasmhooks().arg("check").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("broken") && stdout.contains("FAILED") && stdout.contains("broken.wasm"),
        "{stdout}"
    );
}

#[tokio::test]
async fn deliveries_lists_and_retries_dead_letters_in_a_state_folder() {
    let receiver = crate::Receiver::with(|_, _| (axum::http::StatusCode::GONE, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[settings]\nmode = \"echo\"\nurl = \"{}\"\n",
        receiver.url("/gone")
    );
    install(dir.path(), "echo", "misbehave", Some(&toml));
    let config = crate::test_config(dir.path());
    let state = config.state_dir.clone().unwrap();
    let engine = wasmhooks::Engine::new(config).await.unwrap();
    engine.post(crate::fixture("vm.start.post")).await.unwrap();
    engine.drain().await;
    drop(engine);

    let deliveries = |args: &[&str]| {
        let out = wasmhooks()
            .arg("deliveries")
            .arg("--state")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stdout, stderr)
    };
    let (ok, out, err) = deliveries(&["list", "--dead", "--json"]);
    assert!(ok, "{err}");
    let dead: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert_eq!(dead[0]["hook"], "echo");
    assert_eq!(dead[0]["last_status"], 410);
    let id = dead[0]["id"].as_str().unwrap();

    let (ok, out, err) = deliveries(&["list", "--dead"]);
    assert!(
        ok && out.contains(id) && out.contains("410 Gone"),
        "{out}{err}"
    );

    let (ok, out, err) = deliveries(&["purge", "--older-than-days", "1"]);
    assert!(
        ok && out.starts_with("0 dead letters deleted"),
        "{out}{err}"
    );

    let (ok, out, err) = deliveries(&["show", id]);
    assert!(
        ok && out.contains("dead") && out.contains("status 410") && out.contains("by "),
        "{out}{err}"
    );
    let (ok, _, err) = deliveries(&["retry", "msg_nope"]);
    assert!(
        !ok && err.contains("msg_nope cannot be sent again"),
        "{err}"
    );
    let (ok, _, err) = deliveries(&["retry", "--hook", "echo"]);
    assert!(
        !ok && err.contains("--dead|--failed|--delivered"),
        "a filter needs a state: {err}"
    );
    let (ok, out, err) = deliveries(&[
        "retry",
        "--dead",
        "--hook",
        "echo",
        "--since",
        "1h",
        "--dry-run",
    ]);
    assert!(
        ok && out.starts_with("1 delivery would be sent again"),
        "{out}{err}"
    );
    let (ok, out, err) = deliveries(&["retry", "--dead", "--until", "1h"]);
    assert!(
        ok && out.starts_with("0 deliveries requeued"),
        "queued within the hour, not before: {out}{err}"
    );
    let (ok, out, err) = deliveries(&["retry", "--all-dead"]);
    assert!(ok && out.starts_with("1 delivery requeued"), "{out}{err}");
    let (_, out, _) = deliveries(&["list", "--json"]);
    let pending: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pending[0]["id"], id);
    assert_eq!(pending[0]["attempts"], 0);

    let (ok, _, err) = wasmhooks_deliveries_missing(dir.path());
    assert!(!ok && err.contains("no such file"), "{err}");
}

fn wasmhooks_deliveries_missing(dir: &std::path::Path) -> (bool, String, String) {
    let out = wasmhooks()
        .args(["deliveries", "--state"])
        .arg(dir.join("nowhere"))
        .arg("list")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wasmhooks new` in every language: the folder builds with `./build.sh`,
/// its hook passes `wasmhooks run` on the sample event it comes with, and
/// `wasmhooks test` on the test cases it comes with.
#[test]
fn new_scaffolds_a_hook_that_builds_and_runs_in_every_language() {
    let parent = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], bool); 7] = [
        // (language, tools, whether its sample outcome is a veto)
        ("rust", &[], false),
        ("python", &["componentize-py"], false),
        ("js", &["jco"], true),
        ("c", &["clang", "wit-bindgen", "wasm-tools"], false),
        ("go", &["go", "wit-bindgen", "wasm-tools"], false),
        ("zig", &["zig"], false),
        ("assemblyscript", &["asc"], true),
    ];
    for (lang, tools, vetoes) in cases {
        crate::guests::require_tools(&format!("a `wasmhooks new --lang {lang}` hook"), tools);
        let name = format!("my-{lang}");
        let out = wasmhooks()
            .args(["new", "--lang", lang, &name, "--dir"])
            .arg(parent.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = parent.path().join(&name);
        let built = Command::new(dir.join("build.sh"))
            .current_dir(&dir)
            .env("PATH", crate::guests::toolchain_path())
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{lang}: ./build.sh failed:\n{}{}",
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );
        // A generous deadline: the other tests load this 2-core machine,
        // and a fresh JS or Python instance can miss 100 ms then.
        std::fs::write(dir.join("loaded.toml"), "[limits]\ndeadline_ms = 5000\n").unwrap();
        let ran = wasmhooks()
            .args(["run", &format!("{name}.wasm"), "--event", "event.json"])
            .args(["--config", "loaded.toml"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            ran.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
        let dry: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
        assert_eq!(dry["matches"], true, "{lang}: {dry}");
        if vetoes {
            assert!(dry["outcome"]["deny"].is_string(), "{lang}: {dry}");
        } else {
            assert_eq!(
                dry["outcome"]["deliveries"].as_array().map(Vec::len),
                Some(1),
                "{lang}: {dry}"
            );
        }
        // Its test cases pass as they come.
        let tested = wasmhooks()
            .args(["test", "--config", "loaded.toml"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            tested.status.success(),
            "{lang}: wasmhooks test failed:\n{}{}",
            String::from_utf8_lossy(&tested.stdout),
            String::from_utf8_lossy(&tested.stderr)
        );
    }

    // A name that cannot be a file name, and an existing folder, are refused.
    let out = wasmhooks()
        .args(["new", "--lang", "zig", "Bad Name", "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lowercase"));
    let out = wasmhooks()
        .args(["new", "--lang", "zig", "my-zig", "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// Beyond loopback, `serve` wants a token, unless told otherwise in so
/// many words (before: it only warned).
#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = wasmhooks()
        .args(["serve", "--listen", "0.0.0.0:0", "--no-watch", "--hooks"])
        .arg(dir.path())
        .arg("--state")
        .arg(dir.path().join(".state"))
        .env_remove("WASMHOOKS_TOKEN")
        .env_remove("WASMHOOKS_INSECURE_NO_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for says in [
        "refusing to listen on 0.0.0.0:0",
        "WASMHOOKS_TOKEN",
        "--insecure-no-token",
    ] {
        assert!(stderr.contains(says), "{says} in: {stderr}");
    }
}

/// `watch = false` in the config file holds without `--no-watch`: with the
/// watcher off a missing hooks folder is refused at start (with it on, the
/// folder may appear later), so `serve` exits naming the folder.
#[tokio::test]
async fn serve_keeps_watch_false_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "watch = false\n").unwrap();
    let missing = dir.path().join("no-hooks-here");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .args(["serve", "--listen", "127.0.0.1:0", "--hooks"])
        .arg(&missing)
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("serve refuses a missing hooks folder at start, and exits")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-hooks-here"), "{stderr}");
}
