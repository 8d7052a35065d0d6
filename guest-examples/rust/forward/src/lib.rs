//! `forward`: POSTs the event payload, byte for byte, to `url` for the
//! matching methods and phases, like Xen Orchestra's own web-hook plugin.

use serde::Deserialize;
use wasmhooks_sdk::{Event, Hook, Outcome, Phase, Subscription, settings_error};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default = "wasmhooks_sdk::all_methods")]
    methods: Vec<String>,
    #[serde(
        default = "wasmhooks_sdk::both_phases",
        deserialize_with = "wasmhooks_sdk::deserialize_phases"
    )]
    phases: Vec<Phase>,
}

struct Forward {
    url: String,
}

impl Hook for Forward {
    type Settings = Settings;

    fn setup(s: Settings) -> Result<(Self, Subscription), String> {
        wasmhooks_sdk::check_url("url", &s.url)?;
        if s.methods.is_empty() {
            return Err(settings_error(
                "methods: an empty list matches nothing; leave it out to forward every method",
            ));
        }
        if s.phases.is_empty() {
            return Err(settings_error(
                "phases: an empty list matches nothing; leave it out to forward both phases",
            ));
        }
        let subscription = Subscription::new(s.methods, s.phases);
        Ok((Forward { url: s.url }, subscription))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        Ok(Outcome::deliver(vec![event.forward_to(&self.url)]))
    }
}

wasmhooks_sdk::hook!(Forward);

#[cfg(test)]
mod tests {
    use super::Forward;
    use wasmhooks_sdk::testing::{fixture, handle, setup};

    #[test]
    fn forwards_payload_unchanged() {
        setup::<Forward>(r#"{"url": "https://xo.example/hook"}"#).unwrap();
        let event = fixture("vm.start.pre");
        let out = handle::<Forward>(&event).unwrap();
        assert_eq!(out.deliveries.len(), 1);
        assert_eq!(out.deliveries[0].url, "https://xo.example/hook");
        assert_eq!(out.deliveries[0].body, event.payload.as_bytes());
        assert!(out.deliveries[0].headers.is_empty());
        assert_eq!(out.deny, None);
    }

    #[test]
    fn only_matching_methods_and_phases() {
        let sub = setup::<Forward>(
            r#"{"url": "http://127.0.0.1:9/x", "methods": ["vm.st?rt", "backupNg.*"], "phases": ["post"]}"#,
        )
        .unwrap();
        assert_eq!(sub.methods, ["vm.st?rt", "backupNg.*"]);
        assert_eq!(sub.phases, [wasmhooks_sdk::Phase::Post]);
        let n = |name| handle::<Forward>(&fixture(name)).unwrap().deliveries.len();
        assert_eq!(n("vm.start.post"), 1);
        assert_eq!(n("backupNg.runJob.post"), 1);
        assert_eq!(n("vm.start.pre"), 0);
        assert_eq!(n("vm.migrate.post.error"), 0);
    }

    #[test]
    fn bad_settings() {
        let err = |s| setup::<Forward>(s).unwrap_err();
        assert_eq!(err("{}"), "settings: missing field `url`");
        assert_eq!(
            err(r#"{"url": 1}"#),
            "settings: url: invalid type: integer `1`, expected a string"
        );
        assert!(err(r#"{"url": "xo.example"}"#).contains("absolute http or https URL"));
        assert!(err(r#"{"url": "https://x", "methods": []}"#).starts_with("settings: methods:"));
        assert!(err(r#"{"url": "https://x", "phases": ["both"]}"#).contains("unknown variant"));
        assert!(err(r#"{"url": "https://x", "method": ["vm.*"]}"#).contains("unknown field"));
    }
}
