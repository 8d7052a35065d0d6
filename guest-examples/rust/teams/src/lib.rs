//! `teams`: every event, before and after, as an Office 365 MessageCard for
//! a Microsoft Teams incoming webhook, one fact per top-level event field.

use serde::Deserialize;
use serde_json::{Value, json};
use wasmhooks_sdk::{
    Event, Hook, Outcome, Phase, Subscription, has_error, json_delivery, redact_secrets, text,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
}

struct Teams {
    url: String,
}

impl Hook for Teams {
    type Settings = Settings;

    fn setup(s: Settings) -> Result<(Self, Subscription), String> {
        wasmhooks_sdk::check_url("url", &s.url)?;
        Ok((Teams { url: s.url }, Subscription::all()))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        let mut payload = event.json()?;
        // A channel message is no place for a new credential.
        redact_secrets(&mut payload);
        let (status, color) = match event.phase {
            Phase::Pre => ("requested", "0078D7"),
            Phase::Post if has_error(&payload) => ("failed", "D13438"),
            Phase::Post => ("succeeded", "2EB886"),
            // Subscription::all() is pre and post: not reached.
            Phase::Observed | Phase::System => (event.phase.as_str(), "8A8886"),
        };
        let facts: Vec<Value> = match &payload {
            Value::Object(fields) => fields
                .iter()
                .map(|(name, value)| json!({ "name": name, "value": text(value) }))
                .collect(),
            other => vec![json!({ "name": "event", "value": text(other) })],
        };
        let card = json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": format!("{} {}", event.method, status),
            "themeColor": color,
            "title": format!("{} {} ({})", event.method, status, event.phase.as_str()),
            "sections": [{ "facts": facts }],
        });
        Ok(Outcome::deliver(vec![json_delivery(&self.url, &card)]))
    }
}

wasmhooks_sdk::hook!(Teams);

#[cfg(test)]
mod tests {
    use super::Teams;
    use serde_json::json;
    use wasmhooks_sdk::testing::{bodies, fixture, handle, setup};

    fn card(name: &str) -> serde_json::Value {
        setup::<Teams>(r#"{"url": "https://example.webhook.office.com/webhookb2/x"}"#).unwrap();
        let out = handle::<Teams>(&fixture(name)).unwrap();
        let mut bodies = bodies(&out);
        assert_eq!(bodies.len(), 1);
        bodies.remove(0).1
    }

    #[test]
    fn message_card() {
        let c = card("vm.migrate.post.error");
        assert_eq!(c["@type"], "MessageCard");
        assert_eq!(c["@context"], "https://schema.org/extensions");
        assert_eq!(c["summary"], "vm.migrate failed");
        assert_eq!(c["themeColor"], "D13438");
        let facts = c["sections"][0]["facts"].as_array().unwrap();
        let names: Vec<_> = facts.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "callId",
                "userId",
                "userName",
                "userIp",
                "method",
                "params",
                "timestamp",
                "duration",
                "error",
                "type"
            ]
        );
        assert_eq!(facts[4], json!({"name": "method", "value": "vm.migrate"}));
        assert_eq!(
            facts[6],
            json!({"name": "timestamp", "value": "1764338521004"})
        );
        assert!(
            facts[5]["value"]
                .as_str()
                .unwrap()
                .starts_with(r#"{"vm":"1e1f"#)
        );
        assert_eq!(card("vm.start.pre")["summary"], "vm.start requested");
        assert_eq!(card("vm.start.post")["themeColor"], "2EB886");
    }

    #[test]
    fn hides_new_tokens() {
        let c = card("token.create.post");
        let facts = c["sections"][0]["facts"].as_array().unwrap();
        let result = facts.iter().find(|f| f["name"] == "result").unwrap();
        assert_eq!(result["value"], "* obfuscated *");
        assert!(!c.to_string().contains("Zq3v1X9kP2bL7nR4tW8yA6cE0gJ5mS"));
    }
}
