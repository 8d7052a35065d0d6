//! `world-0-3-0`: a hook built against wasmhooks:hook@0.3.0 (the frozen
//! copy the engine keeps, `src/sandbox/wit-0.3.0/hook.wit`), with no SDK,
//! as a hook compiled before 0.4.0 is. It vetoes every `vm.delete` and
//! says which world it was built for; its subscription is every phase
//! 0.3.0 names (pre, post, observed) of every method, which cannot include
//! system events.

// Generated code, not ours to lint.
#[allow(clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({ path: "../../../src/sandbox/wit-0.3.0", world: "hook", pub_export_macro: true });
}

use bindings::wasmhooks::hook::types::{Event, Level, Outcome, Phase, Subscription};
use bindings::{Guest, export, log};

struct World;

impl Guest for World {
    fn setup(_settings: String) -> Result<Subscription, String> {
        Ok(Subscription {
            methods: vec!["*".into()],
            phases: vec![Phase::Pre, Phase::Post, Phase::Observed],
        })
    }

    fn handle(event: Event) -> Result<Outcome, String> {
        log(Level::Info, &format!("0.3.0 hook got {}", event.method));
        let deny = (event.method == "vm.delete" && event.phase == Phase::Pre)
            .then(|| "refused by a wasmhooks:hook@0.3.0 hook".to_string());
        Ok(Outcome {
            deliveries: Vec::new(),
            deny,
        })
    }
}

export!(World with_types_in bindings);
