//! The HTTP ingest API, served on 127.0.0.1 port 0.

use crate::serve::serve_app;
use crate::{Receiver, fixture_bytes, install, test_config};
use serde_json::Value;
use wasmhooks::Engine;

/// Serves the engine's HTTP API on a loopback port; returns its base URL.
pub async fn serve(engine: Engine) -> String {
    serve_app(wasmhooks::server::router(engine)).await
}

/// Behind `require_token`, only requests with the bearer token get through
/// (and `/healthz`, for liveness probes); a short token is refused.
#[tokio::test]
async fn the_api_can_require_a_bearer_token() {
    let (_dir, engine) = crate::one_hook("deny", "deny", "[settings]\nprotected = []\n").await;
    let router = || wasmhooks::server::router(engine.clone());
    for bad in ["short", "has a space in it!!"] {
        let refused = wasmhooks::server::require_token(router(), bad).err();
        assert_eq!(
            refused,
            Some(wasmhooks::config::SettingsError::Token { min: 16 })
        );
    }
    let token = "0123456789abcdef0123456789abcdef";
    let base = serve_app(wasmhooks::server::require_token(router(), token).unwrap()).await;
    let client = reqwest::Client::new();
    let event = || {
        client
            .post(format!("{base}/v1/events"))
            .body(fixture_bytes("vm.start.pre"))
    };

    for (request, what) in [
        (event(), "no token"),
        (
            event().bearer_auth("0123456789abcdef0123456789abcdeX"),
            "a wrong token",
        ),
        (event().basic_auth("user", Some(token)), "another scheme"),
        (
            client.get(format!("{base}/v1/hooks")),
            "no token, on /v1/hooks",
        ),
        (
            client.get(format!("{base}/metrics")),
            "no token, on /metrics",
        ),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("Bearer"),
            "{what}: {body}"
        );
    }
    let r = event().bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["allowed"], true);
    let r = client
        .get(format!("{base}/v1/hooks"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "liveness needs no token");
}

#[tokio::test]
async fn events_in_verdicts_and_status_out() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "deny",
        "deny",
        Some("[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n"),
    );
    install(
        dir.path(),
        "slack",
        "slack",
        Some(&format!(
            "[settings]\nurl = \"{}\"\n",
            receiver.url("/slack")
        )),
    );
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm garbage").unwrap();
    let engine = Engine::new(test_config(dir.path())).await.unwrap();
    let base = serve(engine.clone()).await;
    let client = reqwest::Client::new();
    let send = |body: Vec<u8>| client.post(format!("{base}/v1/events")).body(body).send();

    let r = send(fixture_bytes("vm.delete.pre")).await.unwrap();
    assert_eq!(r.status(), 200);
    let verdict: Value = r.json().await.unwrap();
    assert_eq!(verdict["allowed"], false);
    assert_eq!(verdict["denied_by"], "deny");

    let r = send(fixture_bytes("vm.start.pre")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["allowed"], true);

    let r = send(fixture_bytes("vm.start.post")).await.unwrap();
    assert_eq!(r.status(), 202);
    // slack takes vm.* pre and post: the pre events above and this post one.
    let got = receiver.wait_for(3).await;
    assert!(got.iter().all(|r| r.path == "/slack"));

    let r = send(br#"{"callId":"x","method":"vm.start","type":"pre"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("`timestamp`"),
        "{body}"
    );

    let r = send(b"not json".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);

    // System events come from the engine alone: a forged one is refused.
    let forged = br#"{"callId":"x","method":"wasmhooks.receiver.circuit_opened","type":"system","timestamp":1}"#;
    let r = send(forged.to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("from the engine itself"),
        "{body}"
    );

    let r = send(vec![b' '; wasmhooks::server::MAX_EVENT_BYTES + 1])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let hooks: Value = crate::json_of(client.get(format!("{base}/v1/hooks"))).await;
    let hooks = hooks.as_array().unwrap();
    assert_eq!(hooks.len(), 3);
    let broken = hooks.iter().find(|h| h["name"] == "broken").unwrap();
    assert_eq!(broken["state"], "failed");
    assert_eq!(broken["last_error"]["stage"], "compile");
    let deny = hooks.iter().find(|h| h["name"] == "deny").unwrap();
    assert_eq!(deny["state"], "live");
    assert_eq!(deny["hash"].as_str().unwrap().len(), 64);
    assert_eq!(
        deny["subscription"]["methods"],
        serde_json::json!(["vm.delete", "vm.stop"])
    );

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let get = |path: &str| client.get(format!("{base}{path}")).send();
    let r = get("/v1/deliveries?state=dead").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), serde_json::json!([]));
    assert_eq!(
        get("/v1/deliveries?state=lost").await.unwrap().status(),
        400
    );
    let retry = |body: Value| {
        client
            .post(format!("{base}/v1/deliveries/retry"))
            .json(&body)
            .send()
    };
    let r = retry(serde_json::json!({"all_dead": true})).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["requeued"], 0);
    let r = retry(serde_json::json!({"id": "msg_nope"})).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(retry(serde_json::json!({})).await.unwrap().status(), 400);
    // The slack hook's three deliveries, delivered and kept: counted only.
    engine.drain().await;
    let r = retry(serde_json::json!({"state": "delivered", "hook": "slack", "dry_run": true}))
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!({"requeued": 3, "dry_run": true})
    );
    let r = get("/v1/deliveries?state=delivered&hook=slack")
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap().as_array().unwrap().len(),
        3
    );
    let backwards = serde_json::json!({"state": "dead", "from_ms": 2, "to_ms": 1});
    let r = retry(backwards).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["requeued"],
        0,
        "an empty range"
    );
    let too_late = serde_json::json!({"state": "dead", "to_ms": 10_000_000_000_000_000_u64});
    assert_eq!(retry(too_late).await.unwrap().status(), 400);

    engine.drain().await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    let receiver_label = format!("receiver=\"{}\"", receiver.addr);
    for line in [
        "wasmhooks_hook_calls_total{hook=\"slack\"} 3".to_owned(),
        "wasmhooks_hook_errors_total{hook=\"slack\"} 0".to_owned(),
        "wasmhooks_hook_duration_seconds_count{hook=\"deny\"} 1".to_owned(),
        "wasmhooks_hook_load_failures_total{hook=\"broken\"} 1".to_owned(),
        format!("wasmhooks_deliveries_total{{{receiver_label}}} 3"),
    ] {
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

/// A list is bounded by the engine, not by the caller.
#[tokio::test]
async fn deliveries_are_listed_a_bounded_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let base = serve(Engine::new(test_config(dir.path())).await.unwrap()).await;
    let client = reqwest::Client::new();
    for (limit, status) in [
        ("1000", 200),
        ("1001", 400),
        ("0", 400),
        ("99999999999", 400),
    ] {
        let r = client
            .get(format!("{base}/v1/deliveries?state=dead&limit={limit}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "limit={limit}");
    }
}
