//! `serve --demo`: a receiver that prints what it gets, and a sender that
//! replays the orchestrator's sample events, so a first run shows the whole
//! path: event → hook → delivery.

use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

/// The sample events, in the order they are replayed.
const SAMPLES: &[(&str, &str)] = &[
    (
        "vm.start.pre",
        include_str!("../../../tests/fixtures/xo/vm.start.pre.json"),
    ),
    (
        "vm.start.post",
        include_str!("../../../tests/fixtures/xo/vm.start.post.json"),
    ),
    (
        "vm.delete.pre",
        include_str!("../../../tests/fixtures/xo/vm.delete.pre.json"),
    ),
    (
        "vm.create.post",
        include_str!("../../../tests/fixtures/xo/vm.create.post.json"),
    ),
    (
        "vm.migrate.post.error",
        include_str!("../../../tests/fixtures/xo/vm.migrate.post.error.json"),
    ),
    (
        "backupNg.runJob.post",
        include_str!("../../../tests/fixtures/xo/backupNg.runJob.post.json"),
    ),
];

/// `POST /demo/receiver/{*path}`: prints each delivery and answers 200.
pub fn receiver() -> Router {
    Router::new().route(
        "/demo/receiver/{*path}",
        post(
            |Path(path): Path<String>, headers: HeaderMap, body: Bytes| async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let signed = if headers.contains_key("webhook-signature") {
                    " (signed)"
                } else {
                    ""
                };
                println!(
                    "  <- receiver /{path} got {id}{signed}: {}",
                    String::from_utf8_lossy(&body)
                );
                "ok"
            },
        ),
    )
}

/// Posts the sample events to the engine's own API, one every two seconds,
/// forever. Each round gets its own call ids (the engine accepts an event
/// sent twice only once).
pub async fn send_samples(addr: SocketAddr, token: Option<String>) {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/events");
    for (i, (name, body)) in SAMPLES.iter().cycle().enumerate() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let round = i / SAMPLES.len();
        let mut event: serde_json::Value = serde_json::from_str(body).expect("samples are JSON");
        if let Some(call) = event["callId"].as_str() {
            event["callId"] = format!("{call}-{round}").into();
        }
        let mut request = client.post(&url).json(&event);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let answer = match request.send().await {
            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => format!("failed: {e}"),
        };
        println!("-> sent {name}: {answer}");
    }
}
