//! `deny`: vetoes `methods` (by default `vm.delete` and `vm.stop`) on the
//! objects listed in `protected` (by `params.id`; `"*"` protects every call,
//! with an id or not, such as `group.create`). Sends nothing.
//!
//! It runs on every pre event of those methods, in a fresh instance, so it
//! reads only the fields it needs (typed serde, borrowed strings) and keeps
//! no hash set (whose random seed would cost a host call per event).

use std::borrow::Cow;

use serde::Deserialize;
use wasmhooks_sdk::{Event, Hook, Outcome, Phase, Subscription};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Object ids (UUIDs), or `"*"` for every call. An empty list is
    /// allowed: nothing is protected.
    protected: Vec<String>,
    /// The methods (globs) it guards.
    #[serde(default = "guarded_by_default")]
    methods: Vec<String>,
}

fn guarded_by_default() -> Vec<String> {
    vec!["vm.delete".into(), "vm.stop".into()]
}

/// The parts of the event this hook reads.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

struct Deny {
    protected: Vec<String>,
}

impl Hook for Deny {
    type Settings = Settings;

    fn setup(s: Settings) -> Result<(Self, Subscription), String> {
        if s.methods.is_empty() {
            return Err(wasmhooks_sdk::settings_error(
                "methods: an empty list guards nothing; leave it out for vm.delete and vm.stop",
            ));
        }
        let subscription = Subscription::new(s.methods, [Phase::Pre]);
        Ok((
            Deny {
                protected: s.protected,
            },
            subscription,
        ))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        let payload: Payload = serde_json::from_str(&event.payload)
            .map_err(|e| format!("event {}: payload is not valid JSON: {e}", event.call_id))?;
        let id = payload.params.and_then(|p| p.id);
        let method = &event.method;
        match id {
            Some(id) if self.protected.iter().any(|p| *p == id) => {
                let what = if method.starts_with("vm.") { "VM " } else { "" };
                Ok(Outcome::deny(format!(
                    "{what}{id} is protected: {method} refused by the deny hook"
                )))
            }
            _ if self.protected.iter().any(|p| p == "*") => Ok(Outcome::deny(format!(
                "{method} is refused by the deny hook (every call is protected)"
            ))),
            _ => Ok(Outcome::skip()),
        }
    }
}

wasmhooks_sdk::hook!(Deny);

#[cfg(test)]
mod tests {
    use super::Deny;
    use wasmhooks_sdk::testing::{fixture, handle, setup};

    const DELETED: &str = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";

    #[test]
    fn denies_protected_only() {
        let sub = setup::<Deny>(&format!(r#"{{"protected": ["{DELETED}"]}}"#)).unwrap();
        assert_eq!(sub.methods, ["vm.delete", "vm.stop"]);
        let out = handle::<Deny>(&fixture("vm.delete.pre")).unwrap();
        assert!(out.deliveries.is_empty());
        let reason = out.deny.unwrap();
        assert!(reason.contains(DELETED), "{reason}");

        setup::<Deny>(r#"{"protected": ["1e1f1c5a-6b3d-4c2e-9a8f-7d6c5b4a3e21"]}"#).unwrap();
        let out = handle::<Deny>(&fixture("vm.delete.pre")).unwrap();
        assert_eq!(out.deny, None);
        // vm.start is not vetoed, even on a protected VM.
        let out = handle::<Deny>(&fixture("vm.start.pre")).unwrap();
        assert_eq!(out.deny, None);
    }

    #[test]
    fn other_methods_and_every_call() {
        setup::<Deny>(r#"{"protected": ["*"], "methods": ["group.create"]}"#).unwrap();
        // Not subscribed: skipped.
        let out = handle::<Deny>(&fixture("vm.delete.pre")).unwrap();
        assert_eq!(out.deny, None);
        setup::<Deny>(r#"{"protected": ["*"], "methods": ["vm.*"]}"#).unwrap();
        let reason = handle::<Deny>(&fixture("vm.delete.pre"))
            .unwrap()
            .deny
            .unwrap();
        assert_eq!(
            reason,
            "vm.delete is refused by the deny hook (every call is protected)"
        );
        let sub = setup::<Deny>(r#"{"protected": ["u-1"], "methods": ["user.delete"]}"#).unwrap();
        assert_eq!(sub.methods, ["user.delete"]);
        assert!(
            setup::<Deny>(r#"{"protected": [], "methods": []}"#)
                .unwrap_err()
                .contains("methods: an empty list")
        );
    }

    #[test]
    fn settings() {
        setup::<Deny>(r#"{"protected": []}"#).unwrap();
        assert_eq!(
            setup::<Deny>("{}").unwrap_err(),
            "settings: missing field `protected`"
        );
        assert!(
            setup::<Deny>(r#"{"protected": "x"}"#)
                .unwrap_err()
                .starts_with("settings: protected: invalid type")
        );
    }
}
