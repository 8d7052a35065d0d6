//! The `hook` world's ABI: its bindings, `setup` and `handle` on a component.
//!
//! Two versions of the world are served. 0.3.0 (`wit/hook.wit`) is the one
//! hooks are written against; 0.2.0 (`wit-0.2.0/hook.wit`, frozen) is what
//! hooks built before the `observed` phase target, and they keep working:
//! linking tries 0.3.0, then 0.2.0. Both import the same `log`, whose types
//! did not change, so one linker serves both.

use super::{Failure, Prepared, RawDelivery, RawOutcome, Sandbox, Subscription};
use super::{HostState, Linked, MAX_LOG_LINE, MAX_LOG_LINES};
use crate::event::{Event, Phase};
use crate::util::truncate;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// wasmhooks:hook@0.3.0, the current world.
pub(super) mod v3 {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "hook",
        exports: { default: async },
    });
}

/// wasmhooks:hook@0.2.0, for hooks built before 0.3.0.
mod v2 {
    wasmtime::component::bindgen!({
        path: "src/sandbox/wit-0.2.0",
        world: "hook",
        exports: { default: async },
    });
}

use v2::wasmhooks::hook::types as wit2;
/// The current world's types, for the host's imports (`log`) too.
pub(super) use v3::wasmhooks::hook::types as wit;
use wit as wit3;

/// A component of the `hook` world, linked: instantiated per call.
#[derive(Clone)]
pub(crate) enum HookPre {
    V3(v3::HookPre<HostState>),
    V2(v2::HookPre<HostState>),
}

/// An instance of a component of the `hook` world.
pub(crate) enum Hook {
    V3(v3::Hook),
    V2(v2::Hook),
}

/// One event as `handle` receives it, in either version's terms.
pub(crate) struct HookEvent<'a> {
    call_id: &'a str,
    phase: Phase,
    method: &'a str,
    timestamp_ms: u64,
    payload: &'a str,
}

impl<'a> From<&'a Event> for HookEvent<'a> {
    fn from(event: &'a Event) -> Self {
        HookEvent {
            call_id: event.call_id(),
            phase: event.phase(),
            method: event.method(),
            timestamp_ms: event.timestamp_ms(),
            payload: event.payload(),
        }
    }
}

impl HookPre {
    /// The component's exports as either version of the world, 0.3.0 first;
    /// the error is 0.3.0's.
    pub(crate) fn new(pre: InstancePre<HostState>) -> wasmtime::Result<HookPre> {
        match v3::HookPre::new(pre.clone()) {
            Ok(pre) => Ok(HookPre::V3(pre)),
            Err(v3_error) => v2::HookPre::new(pre).map(HookPre::V2).map_err(|_| v3_error),
        }
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        match self {
            HookPre::V3(pre) => pre.instance_pre(),
            HookPre::V2(pre) => pre.instance_pre(),
        }
    }

    pub(crate) async fn instantiate_async(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Hook> {
        Ok(match self {
            HookPre::V3(pre) => Hook::V3(pre.instantiate_async(store).await?),
            HookPre::V2(pre) => Hook::V2(pre.instantiate_async(store).await?),
        })
    }

    /// The bindings of `instance`, of this component's version.
    pub(crate) fn bind(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Hook> {
        Ok(match self {
            HookPre::V3(_) => Hook::V3(v3::Hook::new(store, instance)?),
            HookPre::V2(_) => Hook::V2(v2::Hook::new(store, instance)?),
        })
    }
}

impl Hook {
    /// `setup`, with what it returned in the host's terms.
    pub(crate) async fn call_setup(
        &self,
        store: &mut Store<HostState>,
        settings: &str,
    ) -> wasmtime::Result<Result<Subscription, String>> {
        Ok(match self {
            Hook::V3(hook) => hook
                .call_setup(store, settings)
                .await?
                .map(|s| Subscription {
                    methods: s.methods,
                    phases: s.phases.into_iter().map(phase3).collect(),
                }),
            Hook::V2(hook) => hook
                .call_setup(store, settings)
                .await?
                .map(|s| Subscription {
                    methods: s.methods,
                    phases: s.phases.into_iter().map(phase2).collect(),
                }),
        })
    }

    /// `handle`, on an instance whose `setup` has run.
    pub(crate) async fn call_handle(
        &self,
        store: &mut Store<HostState>,
        event: &HookEvent<'_>,
    ) -> wasmtime::Result<Result<RawOutcome, String>> {
        Ok(match self {
            Hook::V3(hook) => {
                let phase = match event.phase {
                    Phase::Pre => wit3::Phase::Pre,
                    Phase::Post => wit3::Phase::Post,
                    Phase::Observed => wit3::Phase::Observed,
                };
                let e = wit3::Event {
                    call_id: event.call_id.to_owned(),
                    phase,
                    method: event.method.to_owned(),
                    timestamp_ms: event.timestamp_ms,
                    payload: event.payload.to_owned(),
                };
                hook.call_handle(store, &e).await?.map(|o| RawOutcome {
                    deliveries: o.deliveries.into_iter().map(delivery3).collect(),
                    deny: o.deny,
                })
            }
            Hook::V2(hook) => {
                let phase = match event.phase {
                    Phase::Pre => wit2::Phase::Pre,
                    Phase::Post => wit2::Phase::Post,
                    // Its subscription cannot name the phase: not reached.
                    Phase::Observed => {
                        return Ok(Err(
                            "a wasmhooks:hook@0.2.0 hook cannot take an observed event".into(),
                        ));
                    }
                };
                let e = wit2::Event {
                    call_id: event.call_id.to_owned(),
                    phase,
                    method: event.method.to_owned(),
                    timestamp_ms: event.timestamp_ms,
                    payload: event.payload.to_owned(),
                };
                hook.call_handle(store, &e).await?.map(|o| RawOutcome {
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
                })
            }
        })
    }
}

fn phase3(p: wit3::Phase) -> Phase {
    match p {
        wit3::Phase::Pre => Phase::Pre,
        wit3::Phase::Post => Phase::Post,
        wit3::Phase::Observed => Phase::Observed,
    }
}

fn phase2(p: wit2::Phase) -> Phase {
    match p {
        wit2::Phase::Pre => Phase::Pre,
        wit2::Phase::Post => Phase::Post,
    }
}

fn delivery3(d: wit3::Delivery) -> RawDelivery {
    RawDelivery {
        url: d.url,
        headers: d.headers,
        body: d.body,
    }
}

impl Sandbox {
    /// Instantiates the hook and runs its `setup` with its settings (for a
    /// hook that is not pre-initialised: see `preinit.rs`).
    pub(crate) async fn setup(&self, hook: &Prepared) -> Result<Subscription, Failure> {
        let Linked::Hook(pre) = &hook.linked else {
            unreachable!("a command hook's subscription comes from its NAME.toml")
        };
        self.call(hook, None, async |store, _| {
            let instance = pre.instantiate_async(&mut *store).await?;
            instance.call_setup(&mut *store, &hook.settings_json).await
        })
        .await
    }

    /// Runs one event through a fresh instance: `handle`, after `setup`
    /// unless the hook is pre-initialised.
    pub(crate) async fn handle(
        &self,
        hook: &Prepared,
        event: &Event,
    ) -> Result<RawOutcome, Failure> {
        if let Linked::Command(pre) = &hook.linked {
            return self.run_command(hook, pre, event).await;
        }
        let hook_event = HookEvent::from(event);
        if let Some(pool) = &hook.warm
            && let Some(result) = self.handle_warm(hook, pool, &hook_event).await
        {
            return result;
        }
        self.call(hook, None, async |store, _| {
            match ready_instance(hook, store).await? {
                Ok(instance) => instance.call_handle(store, &hook_event).await,
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
    let pre = match &hook.linked {
        Linked::Initialized(pre) => return Ok(Ok(pre.instantiate_async(&mut *store).await?)),
        Linked::Hook(pre) => pre,
        Linked::Command(_) => unreachable!("a command hook has no `hook` world instance"),
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

// The `log` import of the hook world (0.3.0's; 0.2.0 hooks link to it too).

impl wit::Host for HostState {}

impl v3::HookImports for HostState {
    fn log(&mut self, level: wit::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(target: "wasmhooks::guest", hook = %self.hook, "more than {MAX_LOG_LINES} log lines in one call; dropping the rest");
            }
            return;
        }
        guest_log(&self.hook, level, truncate(&message, MAX_LOG_LINE));
    }
}

/// Writes one guest line under the `wasmhooks::guest` target, with the hook's name.
pub(super) fn guest_log(hook: &str, level: wit::Level, line: &str) {
    match level {
        wit::Level::Debug => tracing::debug!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Info => tracing::info!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Warn => tracing::warn!(target: "wasmhooks::guest", hook, "{line}"),
        wit::Level::Error => tracing::error!(target: "wasmhooks::guest", hook, "{line}"),
    }
}
