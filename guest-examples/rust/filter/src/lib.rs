//! `filter`: pages on failures. Every post event that carries an `error` is
//! POSTed, payload unchanged, to the pager `url`; everything else is skipped.

use serde::Deserialize;
use wasmhooks_sdk::{Event, Hook, Outcome, Phase, Subscription, has_error};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
}

struct Filter {
    url: String,
}

impl Hook for Filter {
    type Settings = Settings;

    fn setup(s: Settings) -> Result<(Self, Subscription), String> {
        wasmhooks_sdk::check_url("url", &s.url)?;
        let subscription = Subscription::new(wasmhooks_sdk::all_methods(), [Phase::Post]);
        Ok((Filter { url: s.url }, subscription))
    }

    fn handle(&self, event: &Event) -> Result<Outcome, String> {
        if !has_error(&event.json()?) {
            return Ok(Outcome::skip());
        }
        Ok(Outcome::deliver(vec![event.forward_to(&self.url)]))
    }
}

wasmhooks_sdk::hook!(Filter);

#[cfg(test)]
mod tests {
    use super::Filter;
    use wasmhooks_sdk::testing::{fixture, handle, setup};

    #[test]
    fn pages_failures_only() {
        let sub = setup::<Filter>(r#"{"url": "https://pager.example/alert"}"#).unwrap();
        assert_eq!(sub.phases, [wasmhooks_sdk::Phase::Post]);
        let failed = fixture("vm.migrate.post.error");
        let out = handle::<Filter>(&failed).unwrap();
        assert_eq!(out.deliveries.len(), 1);
        assert_eq!(out.deliveries[0].url, "https://pager.example/alert");
        assert_eq!(out.deliveries[0].body, failed.payload.as_bytes());
        for ok in [
            "vm.start.post",
            "vm.create.post",
            "backupNg.runJob.post",
            "vm.start.pre",
        ] {
            let out = handle::<Filter>(&fixture(ok)).unwrap();
            assert!(out.deliveries.is_empty(), "{ok}");
            assert_eq!(out.deny, None);
        }
    }
}
