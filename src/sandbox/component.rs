//! The `hook` world's ABI: its bindings, `setup` and `handle` on a component.
//!
//! Three versions of the world are served. 0.4.0 (`wit/hook.wit`) is the
//! one hooks are written against; 0.3.0 (before the `system` phase) and
//! 0.2.0 (before the `observed` one), frozen in `wit-0.3.0/` and
//! `wit-0.2.0/`, are what older hooks target, and they keep working:
//! linking tries the newest first. Each imports the same `log`, whose
//! types did not change, so one linker serves them all. A hook never gets
//! an event of a phase its version cannot name: its subscription cannot
//! ask for one.

use super::{Failure, Prepared, RawDelivery, RawOutcome, Sandbox, Subscription};
use super::{HostState, Linked, MAX_LOG_LINE, MAX_LOG_LINES};
use crate::event::{Event, Phase};
use crate::util::truncate;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// wasmhooks:hook@0.4.0, the current world.
pub(super) mod v4 {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "hook",
        exports: { default: async },
    });
}

/// wasmhooks:hook@0.3.0, for hooks built before 0.4.0.
mod v3 {
    wasmtime::component::bindgen!({
        path: "src/sandbox/wit-0.3.0",
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
use v3::wasmhooks::hook::types as wit3;
/// The current world's types, for the host's imports (`log`) too.
pub(super) use v4::wasmhooks::hook::types as wit;

/// A component of the `hook` world, linked: instantiated per call.
#[derive(Clone)]
pub(crate) enum HookPre {
    V4(v4::HookPre<HostState>),
    V3(v3::HookPre<HostState>),
    V2(v2::HookPre<HostState>),
}

/// An instance of a component of the `hook` world.
pub(crate) enum Hook {
    V4(v4::Hook),
    V3(v3::Hook),
    V2(v2::Hook),
}

/// One event as `handle` receives it, in any version's terms.
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
    /// The component's exports as some version of the world, newest first;
    /// the error is the newest's.
    pub(crate) fn new(pre: InstancePre<HostState>) -> wasmtime::Result<HookPre> {
        match v4::HookPre::new(pre.clone()) {
            Ok(pre) => Ok(HookPre::V4(pre)),
            Err(v4_error) => v3::HookPre::new(pre.clone())
                .map(HookPre::V3)
                .or_else(|_| v2::HookPre::new(pre).map(HookPre::V2))
                .map_err(|_| v4_error),
        }
    }

    pub(crate) fn instance_pre(&self) -> &InstancePre<HostState> {
        match self {
            HookPre::V4(pre) => pre.instance_pre(),
            HookPre::V3(pre) => pre.instance_pre(),
            HookPre::V2(pre) => pre.instance_pre(),
        }
    }

    pub(crate) async fn instantiate_async(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Hook> {
        Ok(match self {
            HookPre::V4(pre) => Hook::V4(pre.instantiate_async(store).await?),
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
            HookPre::V4(_) => Hook::V4(v4::Hook::new(store, instance)?),
            HookPre::V3(_) => Hook::V3(v3::Hook::new(store, instance)?),
            HookPre::V2(_) => Hook::V2(v2::Hook::new(store, instance)?),
        })
    }
}

/// A version's phases, in the host's terms and back.
trait VersionPhase: Sized {
    fn to_host(self) -> Phase;
    /// `None` for a phase added after this version.
    fn from_host(phase: Phase) -> Option<Self>;
}

impl VersionPhase for wit::Phase {
    fn to_host(self) -> Phase {
        match self {
            wit::Phase::Pre => Phase::Pre,
            wit::Phase::Post => Phase::Post,
            wit::Phase::Observed => Phase::Observed,
            wit::Phase::System => Phase::System,
        }
    }
    fn from_host(phase: Phase) -> Option<Self> {
        Some(match phase {
            Phase::Pre => wit::Phase::Pre,
            Phase::Post => wit::Phase::Post,
            Phase::Observed => wit::Phase::Observed,
            Phase::System => wit::Phase::System,
        })
    }
}

impl VersionPhase for wit3::Phase {
    fn to_host(self) -> Phase {
        match self {
            wit3::Phase::Pre => Phase::Pre,
            wit3::Phase::Post => Phase::Post,
            wit3::Phase::Observed => Phase::Observed,
        }
    }
    fn from_host(phase: Phase) -> Option<Self> {
        match phase {
            Phase::Pre => Some(wit3::Phase::Pre),
            Phase::Post => Some(wit3::Phase::Post),
            Phase::Observed => Some(wit3::Phase::Observed),
            Phase::System => None,
        }
    }
}

impl VersionPhase for wit2::Phase {
    fn to_host(self) -> Phase {
        match self {
            wit2::Phase::Pre => Phase::Pre,
            wit2::Phase::Post => Phase::Post,
        }
    }
    fn from_host(phase: Phase) -> Option<Self> {
        match phase {
            Phase::Pre => Some(wit2::Phase::Pre),
            Phase::Post => Some(wit2::Phase::Post),
            Phase::Observed | Phase::System => None,
        }
    }
}

/// The same code for each version of the world, whose types differ only
/// in the phases they name.
macro_rules! versioned {
    ($hook:expr, |$h:ident, $types:ident| $body:expr) => {
        match $hook {
            Hook::V4($h) => {
                use wit as $types;
                $body
            }
            Hook::V3($h) => {
                use wit3 as $types;
                $body
            }
            Hook::V2($h) => {
                use wit2 as $types;
                $body
            }
        }
    };
}

impl Hook {
    /// `setup`, with what it returned in the host's terms.
    pub(crate) async fn call_setup(
        &self,
        store: &mut Store<HostState>,
        settings: &str,
    ) -> wasmtime::Result<Result<Subscription, String>> {
        Ok(versioned!(self, |hook, types| {
            hook.call_setup(store, settings)
                .await?
                .map(|s| Subscription {
                    methods: s.methods,
                    phases: s.phases.into_iter().map(types::Phase::to_host).collect(),
                })
        }))
    }

    /// `handle`, on an instance whose `setup` has run.
    pub(crate) async fn call_handle(
        &self,
        store: &mut Store<HostState>,
        event: &HookEvent<'_>,
    ) -> wasmtime::Result<Result<RawOutcome, String>> {
        Ok(versioned!(self, |hook, types| {
            // Its subscription cannot name a later phase: not reached.
            let Some(phase) = types::Phase::from_host(event.phase) else {
                return Ok(Err(format!(
                    "a hook built against an older wasmhooks:hook cannot take a {} event",
                    event.phase
                )));
            };
            let e = types::Event {
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
        }))
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

// The `log` import of the hook world (0.4.0's; older hooks link to it too).

impl wit::Host for HostState {}

impl v4::HookImports for HostState {
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
