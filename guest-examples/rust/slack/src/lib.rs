//! `slack`: one Slack message per `vm.*` call, before and after it runs:
//! who did what to which VM, and how it went. With `alerts = true`, also
//! one per alert the engine raises about itself (system events,
//! `wasmhooks.*`): a receiver's circuit opened or closed, dead letters, a
//! hook that failed to load, a source that lost XO.

use serde::Deserialize;
use serde_json::{Value, json};
use wasmhooks_sdk::{
    Event, Hook, Outcome, Phase, Subscription, has_error, json_delivery, str_field, text,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    /// Also post the engine's own alerts (system events).
    #[serde(default)]
    alerts: bool,
}

struct Slack {
    url: String,
}

impl Hook for Slack {
    type Settings = Settings;

    fn setup(s: Settings) -> Result<(Self, Subscription), String> {
        wasmhooks_sdk::check_url("url", &s.url)?;
        // XO names no method `wasmhooks.*`, callers may not send one, and
        // the engine sends only those: the one subscription serves both
        // without crossing them.
        let subscription = if s.alerts {
            Subscription::new(
                ["vm.*", "wasmhooks.*"],
                [Phase::Pre, Phase::Post, Phase::System],
            )
        } else {
            Subscription::new(["vm.*"], [Phase::Pre, Phase::Post])
        };
        Ok((Slack { url: s.url }, subscription))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        let payload = event.json()?;
        if event.phase == Phase::System {
            let body = json!({ "text": escape(&alert(&event.method, &payload)) });
            return Ok(Outcome::deliver(vec![json_delivery(&self.url, &body)]));
        }
        let message = format!(
            "{} called {} on VM {}: {}",
            user(&payload),
            event.method,
            vm_id(&event.method, &payload),
            outcome(event.phase, &payload),
        );
        let body = json!({ "text": escape(&message) });
        Ok(Outcome::deliver(vec![json_delivery(&self.url, &body)]))
    }
}

/// `userName`, else `userId`, else `(unknown user)`.
fn user(payload: &Value) -> String {
    str_field(payload, "userName")
        .or_else(|| str_field(payload, "userId"))
        .unwrap_or("(unknown user)")
        .to_string()
}

/// `params.id`, else `params.vm`, else the `result` of `vm.create`, else `?`.
fn vm_id(method: &str, payload: &Value) -> String {
    let params = payload.get("params");
    let param = |key| params.and_then(|p| p.get(key)).filter(|v| !v.is_null());
    if let Some(id) = param("id").or_else(|| param("vm")) {
        return text(id);
    }
    match payload.get("result") {
        Some(Value::String(id)) if method == "vm.create" => id.clone(),
        _ => "?".to_string(),
    }
}

/// `requested`, `succeeded in N ms` or `failed: <error.message>`.
fn outcome(phase: Phase, payload: &Value) -> String {
    if phase == Phase::Pre {
        return "requested".to_string();
    }
    if has_error(payload) {
        let error = &payload["error"];
        let message = str_field(error, "message")
            .map(str::to_string)
            .unwrap_or_else(|| text(error));
        return format!("failed: {message}");
    }
    match payload.get("duration").and_then(Value::as_u64) {
        Some(ms) => format!("succeeded in {ms} ms"),
        None => "succeeded".to_string(),
    }
}

/// One line for an alert: what happened, to what, how often, and what to
/// do, from the system event's `params`.
fn alert(method: &str, payload: &Value) -> String {
    let p = &payload["params"];
    let field = |key: &str| str_field(p, key).unwrap_or("?").to_string();
    let count = p["count"].as_u64().unwrap_or(1);
    let error = str_field(p, "error")
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    let what = match method {
        "wasmhooks.receiver.circuit_opened" => format!(
            "receiver {} keeps failing; its deliveries are paused{error}",
            field("receiver")
        ),
        "wasmhooks.receiver.circuit_closed" => format!(
            "receiver {} is back; its deliveries resume",
            field("receiver")
        ),
        "wasmhooks.delivery.dead" => {
            let receiver = field("receiver");
            let what = match count {
                1 => format!("a delivery to {receiver} became a dead letter"),
                n => format!("{n} deliveries to {receiver} became dead letters"),
            };
            format!(
                "{what}{error}; replay with `wasmhooks deliveries retry --dead --receiver {receiver}`"
            )
        }
        "wasmhooks.hook.load_failed" => {
            let serving = match str_field(p, "serving") {
                Some(v) => format!("version {v} keeps serving"),
                None => "it is not serving".to_string(),
            };
            format!(
                "hook {} failed to load ({} of {}){error}; {serving}",
                field("hook"),
                field("stage"),
                field("file")
            )
        }
        "wasmhooks.hook.recovered" => format!("hook {} loads again", field("hook")),
        "wasmhooks.source.disconnected" if str_field(p, "reason") == Some("overflow") => format!(
            "source {} fell behind {}'s events and reads them again from scratch{error}",
            field("source"),
            field("url")
        ),
        "wasmhooks.source.disconnected" => {
            format!("source {} lost {}{error}", field("source"), field("url"))
        }
        "wasmhooks.source.reconnected" => {
            format!("source {} reads {} again", field("source"), field("url"))
        }
        other => format!("{other}: {}", text(p)),
    };
    // A summary stands for several alerts: the latest one's words, counted.
    let times = if p["summary"] == true && method != "wasmhooks.delivery.dead" {
        format!(" ({count} times this window)")
    } else {
        String::new()
    };
    let engine = str_field(payload, "engine").unwrap_or("wasmhooks");
    format!("[{engine}] {what}{times}")
}

/// Slack's three control characters in message text.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

wasmhooks_sdk::hook!(Slack);

#[cfg(test)]
mod tests {
    use super::Slack;
    use wasmhooks_sdk::testing::{bodies, event, fixture, handle, setup};

    fn text(name: &str) -> String {
        setup::<Slack>(r#"{"url": "https://hooks.slack.com/services/T/B/X"}"#).unwrap();
        let out = handle::<Slack>(&fixture(name)).unwrap();
        let bodies = bodies(&out);
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].0, "https://hooks.slack.com/services/T/B/X");
        bodies[0].1["text"].as_str().unwrap().to_string()
    }

    #[test]
    fn messages() {
        assert_eq!(
            text("vm.start.pre"),
            "alice@example.org called vm.start on VM 1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21: requested"
        );
        assert_eq!(
            text("vm.start.post"),
            "alice@example.org called vm.start on VM 1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21: succeeded in 5608 ms"
        );
        assert_eq!(
            text("vm.migrate.post.error"),
            "alice@example.org called vm.migrate on VM 1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21: failed: no such object"
        );
        assert_eq!(
            text("vm.create.post"),
            "ci-bot@example.org called vm.create on VM 6d1f3b5a-7c9e-4b2d-8f0a-1e3c5b7d9f2a: succeeded in 9876 ms"
        );
    }

    #[test]
    fn fallbacks_and_escaping() {
        setup::<Slack>(r#"{"url": "https://hooks.slack.com/services/T/B/X"}"#).unwrap();
        let ev =
            event(r#"{"callId":"a","method":"vm.<b>","params":{},"timestamp":1,"type":"pre"}"#);
        let out = handle::<Slack>(&ev).unwrap();
        assert_eq!(
            bodies(&out)[0].1["text"],
            "(unknown user) called vm.&lt;b&gt; on VM ?: requested"
        );
        let ev = event(r#"{"callId":"a","userId":"u1","method":"vm.stop","type":"pre"}"#);
        let out = handle::<Slack>(&ev).unwrap();
        assert_eq!(
            bodies(&out)[0].1["text"],
            "u1 called vm.stop on VM ?: requested"
        );
    }

    #[test]
    fn alerts_only_when_asked_for() {
        let circuit = event(
            r#"{"callId":"sys-1","method":"wasmhooks.receiver.circuit_opened","type":"system",
                "timestamp":1,"engine":"xo1/42","params":{"receiver":"ci.example.org:443",
                "count":1,"summary":false,"failures":5,"error":"connection refused"}}"#,
        );
        let subscription = setup::<Slack>(r#"{"url": "https://hooks.slack.com/services/T/B/X"}"#);
        assert!(!subscription.unwrap().matches(&circuit));
        setup::<Slack>(r#"{"url": "https://hooks.slack.com/services/T/B/X", "alerts": true}"#)
            .unwrap();
        let out = handle::<Slack>(&circuit).unwrap();
        assert_eq!(
            bodies(&out)[0].1["text"],
            "[xo1/42] receiver ci.example.org:443 keeps failing; its deliveries are paused: connection refused"
        );
        let dead = event(
            r#"{"callId":"sys-2","method":"wasmhooks.delivery.dead","type":"system",
                "timestamp":1,"engine":"xo1/42","params":{"receiver":"r:80","count":999,
                "summary":true,"error":"gave up after 3 attempts: 500"}}"#,
        );
        let out = handle::<Slack>(&dead).unwrap();
        assert_eq!(
            bodies(&out)[0].1["text"],
            "[xo1/42] 999 deliveries to r:80 became dead letters: gave up after 3 attempts: 500; \
             replay with `wasmhooks deliveries retry --dead --receiver r:80`"
        );
        let behind = event(
            r#"{"callId":"sys-3","method":"wasmhooks.source.disconnected","type":"system",
                "timestamp":1,"engine":"xo1/42","params":{"source":"xo","url":"https://xo",
                "reason":"overflow","count":1,"summary":false}}"#,
        );
        assert_eq!(
            bodies(&handle::<Slack>(&behind).unwrap())[0].1["text"],
            "[xo1/42] source xo fell behind https://xo's events and reads them again from scratch"
        );
        // XO's events still come through.
        assert_eq!(
            bodies(&handle::<Slack>(&fixture("vm.start.pre")).unwrap()).len(),
            1
        );
    }

    #[test]
    fn only_vm_methods() {
        setup::<Slack>(r#"{"url": "https://hooks.slack.com/services/T/B/X"}"#).unwrap();
        let out = handle::<Slack>(&fixture("host.shutdown.pre")).unwrap();
        assert!(out.deliveries.is_empty());
        assert_eq!(
            setup::<Slack>("{}").unwrap_err(),
            "settings: missing field `url`"
        );
    }
}
