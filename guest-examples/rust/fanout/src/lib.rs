//! `fanout`: for each successful `vm.create`, one record to the CMDB and one
//! to billing, each shaped for its receiver.

use serde::Deserialize;
use serde_json::{Value, json};
use wasmhooks_sdk::{Event, Hook, Outcome, Phase, Subscription, has_error, json_delivery};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    cmdb_url: String,
    billing_url: String,
}

struct Fanout {
    cmdb_url: String,
    billing_url: String,
}

impl Hook for Fanout {
    type Settings = Settings;

    fn setup(s: Settings) -> Result<(Self, Subscription), String> {
        wasmhooks_sdk::check_url("cmdb_url", &s.cmdb_url)?;
        wasmhooks_sdk::check_url("billing_url", &s.billing_url)?;
        let subscription = Subscription::new(["vm.create"], [Phase::Post]);
        let hook = Fanout {
            cmdb_url: s.cmdb_url,
            billing_url: s.billing_url,
        };
        Ok((hook, subscription))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        let payload = event.json()?;
        if has_error(&payload) {
            return Ok(Outcome::skip());
        }
        let vm_id = match payload.get("result") {
            Some(Value::String(id)) if !id.is_empty() => id.as_str(),
            _ => {
                return Err(format!(
                    "event {}: vm.create succeeded but `result` is not a VM id",
                    event.call_id
                ));
            }
        };
        let field = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
        let params = payload.get("params");
        let param = |key| field(params.and_then(|p| p.get(key)));
        let at = event.timestamp_ms;
        let cmdb = json!({
            "vm_id": vm_id,
            "name": param("name_label"),
            "template": param("template"),
            "tags": param("tags"),
            "created_by": field(payload.get("userName")),
            "created_at": at,
        });
        let billing = json!({
            "event": "vm.created",
            "vm_id": vm_id,
            "customer": field(payload.get("userId")),
            "at": at,
        });
        Ok(Outcome::deliver(vec![
            json_delivery(&self.cmdb_url, &cmdb),
            json_delivery(&self.billing_url, &billing),
        ]))
    }
}

wasmhooks_sdk::hook!(Fanout);

#[cfg(test)]
mod tests {
    use super::Fanout;
    use serde_json::json;
    use wasmhooks_sdk::testing::{bodies, fixture, handle, setup};

    const SETTINGS: &str = r#"{"cmdb_url": "https://cmdb.example/api/vms", "billing_url": "https://billing.example/events"}"#;

    #[test]
    fn two_records() {
        setup::<Fanout>(SETTINGS).unwrap();
        let out = handle::<Fanout>(&fixture("vm.create.post")).unwrap();
        let bodies = bodies(&out);
        assert_eq!(
            bodies[0],
            (
                "https://cmdb.example/api/vms".to_string(),
                json!({
                    "vm_id": "6d1f3b5a-7c9e-4b2d-8f0a-1e3c5b7d9f2a",
                    "name": "build-runner-42",
                    "template": "c5d0f0e2-3a7b-4e1c-8d9f-0a1b2c3d4e5f",
                    "tags": ["ci", "ephemeral"],
                    "created_by": "ci-bot@example.org",
                    "created_at": 1764338600450u64,
                })
            )
        );
        assert_eq!(
            bodies[1],
            (
                "https://billing.example/events".to_string(),
                json!({
                    "event": "vm.created",
                    "vm_id": "6d1f3b5a-7c9e-4b2d-8f0a-1e3c5b7d9f2a",
                    "customer": "8a2f6c4e-1d3b-4f5a-9e7c-6b0d2a4f8c13",
                    "at": 1764338600450u64,
                })
            )
        );
    }

    #[test]
    fn skips_failures_and_other_events() {
        setup::<Fanout>(SETTINGS).unwrap();
        let mut failed = fixture("vm.migrate.post.error");
        failed.method = "vm.create".into();
        assert!(handle::<Fanout>(&failed).unwrap().deliveries.is_empty());
        assert!(
            handle::<Fanout>(&fixture("vm.start.post"))
                .unwrap()
                .deliveries
                .is_empty()
        );
        assert_eq!(
            setup::<Fanout>(r#"{"cmdb_url": "https://cmdb.example"}"#).unwrap_err(),
            "settings: missing field `billing_url`"
        );
    }
}
