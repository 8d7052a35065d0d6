//! `deny`: vetoes `vm.delete` and `vm.stop` on the VMs listed in `protected`.
//! Sends nothing.

use std::collections::HashSet;

use serde::Deserialize;
use wasmhooks_sdk::{Event, Hook, Outcome, Phase, Subscription, str_field, text};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// VM ids (UUIDs). An empty list is allowed: nothing is protected.
    protected: Vec<String>,
}

struct Deny {
    protected: HashSet<String>,
}

impl Hook for Deny {
    type Settings = Settings;

    fn init(s: Settings) -> Result<(Self, Subscription), String> {
        let protected = s.protected.into_iter().collect();
        let subscription = Subscription::new(["vm.delete", "vm.stop"], [Phase::Pre]);
        Ok((Deny { protected }, subscription))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        let payload = event.json()?;
        let Some(id) = payload.get("params").and_then(|p| p.get("id")) else {
            return Ok(Outcome::skip());
        };
        let id = text(id);
        if !self.protected.contains(&id) {
            return Ok(Outcome::skip());
        }
        let user = str_field(&payload, "userName")
            .or_else(|| str_field(&payload, "userId"))
            .unwrap_or("(unknown user)");
        wasmhooks_sdk::log::debug(format!("denied {} of VM {id} by {user}", event.method));
        Ok(Outcome::deny(format!(
            "VM {id} is protected: {} refused by the deny hook",
            event.method
        )))
    }
}

wasmhooks_sdk::hook!(Deny);

#[cfg(test)]
mod tests {
    use super::Deny;
    use wasmhooks_sdk::testing::{fixture, handle, init};

    const DELETED: &str = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";

    #[test]
    fn denies_protected_only() {
        let sub = init::<Deny>(&format!(r#"{{"protected": ["{DELETED}"]}}"#)).unwrap();
        assert_eq!(sub.methods, ["vm.delete", "vm.stop"]);
        let out = handle::<Deny>(&fixture("vm.delete.pre")).unwrap();
        assert!(out.deliveries.is_empty());
        let reason = out.deny.unwrap();
        assert!(reason.contains(DELETED), "{reason}");

        init::<Deny>(r#"{"protected": ["1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21"]}"#).unwrap();
        let out = handle::<Deny>(&fixture("vm.delete.pre")).unwrap();
        assert_eq!(out.deny, None);
        // vm.start is not vetoed, even on a protected VM.
        let out = handle::<Deny>(&fixture("vm.start.pre")).unwrap();
        assert_eq!(out.deny, None);
    }

    #[test]
    fn settings() {
        init::<Deny>(r#"{"protected": []}"#).unwrap();
        assert_eq!(
            init::<Deny>("{}").unwrap_err(),
            "settings: missing field `protected`"
        );
        assert!(
            init::<Deny>(r#"{"protected": "x"}"#)
                .unwrap_err()
                .starts_with("settings: protected: invalid type")
        );
    }
}
