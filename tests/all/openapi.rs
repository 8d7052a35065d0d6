//! The HTTP API matches its OpenAPI document: schemathesis (PyPI) generates
//! requests from `/v1/openapi.json` of a real `wasmhooks serve` (real hooks,
//! a real receiver, a token) and checks every answer against the document:
//! no 5xx, every status, content type, header and body as documented, bad
//! input refused, the token enforced.

use crate::{Receiver, Serve, install, root};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_matches_its_openapi_document() {
    let schemathesis = root().join(".toolchains/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "schemathesis is missing: run scripts/install-guest-toolchains.sh"
    );
    // `/gone` answers 410, so the `gone` hook's deliveries become dead letters.
    let receiver = Receiver::with(|r, _| match r.path.as_str() {
        "/gone" => (axum::http::StatusCode::GONE, vec![]),
        _ => (axum::http::StatusCode::OK, vec![]),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let forward = format!(
        "allow_hosts = [\"127.0.0.1\"]\n[settings]\nurl = \"{}\"\nmethods = [\"*\"]\nphases = [\"pre\", \"post\"]\n",
        receiver.url("/any")
    );
    install(&hooks, "forward", "forward", Some(&forward));
    let gone = format!(
        "allow_hosts = [\"127.0.0.1\"]\n[settings]\nurl = \"{}\"\nmethods = [\"vm.start\"]\nphases = [\"post\"]\n",
        receiver.url("/gone")
    );
    install(&hooks, "gone", "forward", Some(&gone));
    install(
        &hooks,
        "deny",
        "deny",
        Some("[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n"),
    );
    std::fs::write(hooks.join("broken.wasm"), "not WebAssembly").unwrap();
    let config = dir.path().join("engine.toml");
    std::fs::write(&config, "").unwrap();
    let token = "schemathesis-token-0123456789abcdef";
    let engine = Serve::start_with(
        &hooks,
        &dir.path().join("state"),
        &config,
        &["--token", token],
    );
    let base = format!("http://{}", engine.addr);
    // Deliveries (three become dead letters) for the listings to page through.
    let client = reqwest::Client::new();
    for i in 0..3 {
        let event = format!(
            r#"{{"callId":"c{i}","method":"vm.start","type":"post","timestamp":1,"duration":1,"result":true}}"#
        );
        let r = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(token)
            .body(event)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    // The dead letters are in before schemathesis lists and retries them.
    let dead = || async {
        let rows = crate::json_of(
            client
                .get(format!("{base}/v1/deliveries?state=dead"))
                .bearer_auth(token),
        )
        .await;
        rows.as_array().unwrap().len()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while dead().await < 3 {
        assert!(std::time::Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let seed = std::env::var("WASMHOOKS_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let report = root().join("target/schemathesis");
    std::fs::create_dir_all(&report).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            // Its caches go there too, not into the work tree.
            .current_dir(&report)
            .args(["run", &format!("{base}/v1/openapi.json")])
            .args(["--checks", "all", "--max-examples", "30", "--workers", "1"])
            .args(["--seed", &seed, "--request-timeout", "30"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--report", "junit", "--report-dir"])
            .arg(&report)
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    println!("{out}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found the API and its document at odds (its report is above); \
         the engine's log:\n{}",
        engine.log.lock().unwrap().join("\n")
    );
    drop(receiver);
}
