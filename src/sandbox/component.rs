//! The `hook` world's ABI: its bindings, `setup` and `handle` on a component.

use super::{Failure, Prepared, RawDelivery, RawOutcome, Sandbox, Subscription};
use super::{HostState, Pre};
use crate::event::{Event, Phase};
use wasmtime::Store;

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "hook",
        exports: { default: async },
    });
}

pub(super) use bindings::wasmhooks::hook::types as wit;
pub(crate) use bindings::{Hook, HookPre};

impl Sandbox {
    /// Instantiates the hook and runs its `setup` with its settings (for a
    /// hook that is not pre-initialised: see `preinit.rs`).
    pub async fn setup(&self, hook: &Prepared) -> Result<Subscription, Failure> {
        let Pre::Hook(pre) = &hook.pre else {
            unreachable!("a command hook's subscription comes from its NAME.toml")
        };
        self.call(hook, None, async |store, _| {
            let instance: Hook = pre.instantiate_async(&mut *store).await?;
            Ok(instance
                .call_setup(&mut *store, &hook.settings_json)
                .await?
                .map(super::preinit::subscription))
        })
        .await
    }

    /// Runs one event through a fresh instance: `handle`, after `setup`
    /// unless the hook is pre-initialised.
    pub async fn handle(&self, hook: &Prepared, event: &Event) -> Result<RawOutcome, Failure> {
        if let Pre::Command(pre) = &hook.pre {
            return self.run_command(hook, pre, event).await;
        }
        let wit_event = wit::Event {
            call_id: event.call_id().to_owned(),
            phase: event.phase().into(),
            method: event.method().to_owned(),
            timestamp_ms: event.timestamp_ms(),
            payload: event.payload().to_owned(),
        };
        if let Some(pool) = &hook.warm
            && let Some(result) = self.handle_warm(hook, pool, &wit_event).await
        {
            return result;
        }
        self.call(hook, None, async |store, _| {
            match ready_instance(hook, store).await? {
                Ok(instance) => call_handle(&instance, store, &wit_event).await,
                Err(message) => Ok(Err(message)),
            }
        })
        .await
    }
}

/// A new instance ready for `handle`: a pre-initialised hook's as it is,
/// any other with `setup` run on the hook's settings.
pub(super) async fn ready_instance(
    hook: &Prepared,
    store: &mut Store<HostState>,
) -> wasmtime::Result<Result<Hook, String>> {
    let pre = match &hook.pre {
        Pre::Initialized(pre) => return Ok(Ok(pre.instantiate_async(&mut *store).await?)),
        Pre::Hook(pre) => pre,
        Pre::Command(_) => unreachable!("a command hook has no `hook` world instance"),
    };
    let instance = pre.instantiate_async(&mut *store).await?;
    Ok(
        match instance
            .call_setup(&mut *store, &hook.settings_json)
            .await?
        {
            Ok(_) => Ok(instance),
            Err(message) => Err(format!("setup refused its settings: {message}")),
        },
    )
}

/// `handle` on an instance whose `setup` has run.
pub(super) async fn call_handle(
    instance: &Hook,
    store: &mut Store<HostState>,
    event: &wit::Event,
) -> wasmtime::Result<Result<RawOutcome, String>> {
    Ok(instance
        .call_handle(&mut *store, event)
        .await?
        .map(|o| RawOutcome {
            deliveries: o
                .deliveries
                .into_iter()
                .map(|d| RawDelivery {
                    url: d.url,
                    headers: d.headers,
                    body: d.body,
                })
                .collect(),
            deny: o.deny,
        }))
}

impl From<wit::Phase> for Phase {
    fn from(p: wit::Phase) -> Phase {
        match p {
            wit::Phase::Pre => Phase::Pre,
            wit::Phase::Post => Phase::Post,
        }
    }
}

impl From<Phase> for wit::Phase {
    fn from(p: Phase) -> wit::Phase {
        match p {
            Phase::Pre => wit::Phase::Pre,
            Phase::Post => wit::Phase::Post,
        }
    }
}
