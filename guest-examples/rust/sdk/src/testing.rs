//! Helpers for native unit tests of hooks (`cargo test`), not in wasm builds.

use crate::{Event, Hook, Outcome, Phase, Subscription};

/// The event in `tests/fixtures/xo/NAME.json`, lifted like the host does.
pub fn fixture(name: &str) -> Event {
    let path = format!(
        "{}/../../../tests/fixtures/xo/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let payload = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    event(&payload)
}

/// An event for `payload` (JSON text), lifted like the host does.
pub fn event(payload: &str) -> Event {
    let v: serde_json::Value = serde_json::from_str(payload).expect("payload JSON");
    Event {
        call_id: v["callId"].as_str().unwrap_or_default().to_string(),
        phase: match v["type"].as_str() {
            Some("pre") => Phase::Pre,
            Some("observed") => Phase::Observed,
            Some("system") => Phase::System,
            _ => Phase::Post,
        },
        method: v["method"].as_str().unwrap_or_default().to_string(),
        timestamp_ms: v["timestamp"].as_u64().unwrap_or_default(),
        payload: payload.to_string(),
    }
}

/// Runs `setup` as the host would, with `settings` as JSON text.
pub fn setup<H: Hook>(settings: &str) -> Result<Subscription, String> {
    crate::run_setup::<H>(settings)
}

/// Runs `handle` as the host would (after [`setup`] on this thread).
pub fn handle<H: Hook>(event: &Event) -> Result<Outcome, String> {
    crate::run_handle::<H>(event)
}

/// The bodies of `outcome`'s deliveries parsed as JSON, with their URLs.
pub fn bodies(outcome: &Outcome) -> Vec<(String, serde_json::Value)> {
    outcome
        .deliveries
        .iter()
        .map(|d| {
            let body = serde_json::from_slice(&d.body).expect("body JSON");
            (d.url.clone(), body)
        })
        .collect()
}
