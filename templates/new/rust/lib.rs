//! A wasmhooks hook in Rust: POSTs each `vm.*` post event's payload,
//! unchanged, to the `url` of its settings. Edit `setup` and `handle`.

wit_bindgen::generate!({ path: "wit", world: "hook" });

use std::sync::OnceLock;
// The world `use`s these four from its `types` interface; the rest are imported here.
use wasmhooks::hook::types::{Delivery, Phase};

/// Set by `setup`, which the engine runs right before `handle` in every
/// fresh instance.
static URL: OnceLock<String> = OnceLock::new();

struct Component;

impl Guest for Component {
    fn setup(settings: String) -> Result<Subscription, String> {
        let settings: serde_json::Value =
            serde_json::from_str(&settings).map_err(|e| format!("settings: {e}"))?;
        let url = settings["url"]
            .as_str()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or("settings: `url` must be an http(s) URL")?;
        let _ = URL.set(url.to_owned());
        Ok(Subscription {
            methods: vec!["vm.*".into()],
            phases: vec![Phase::Post],
        })
    }

    fn handle(event: Event) -> Result<Outcome, String> {
        let url = URL.get().ok_or("handle before setup")?;
        log(Level::Debug, &format!("forwarding {}", event.method));
        Ok(Outcome {
            deliveries: vec![Delivery {
                url: url.clone(),
                headers: Vec::new(),
                body: event.payload.into_bytes(),
            }],
            deny: None,
        })
    }
}

export!(Component);
