//! What `GET /v1/hooks` says of each hook.

use super::LoadError;
use super::Registry;
use crate::config::{HookMode, OnError};

use crate::sandbox::{Linked, Subscription};
use serde::Serialize;
use std::path::PathBuf;

/// Whether a hook is taking events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HookState {
    /// Loaded and taking events (possibly an older version, see `last_error`).
    Live,
    /// Never loaded successfully; not taking events.
    Failed,
}

/// How a hook talks to the engine (see docs/writing-hooks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Abi {
    /// A component of the `hook` world.
    Component,
    /// A WASI command: event on stdin, outcome on stdout.
    Command,
}

/// What the status API and `check` show for one hook.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HookStatus {
    /// The hook's name: its file name without `.wasm`.
    pub name: String,
    /// Live or failed.
    pub state: HookState,
    /// The `.wasm` file.
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub file: PathBuf,
    /// SHA-256 of the live version's `.wasm` and `.toml`, hex.
    pub hash: Option<String>,
    /// The id of the key whose signature of the live version was checked
    /// at load, on an engine with `[trust]`.
    pub signed_by: Option<String>,
    /// When the live version was loaded, RFC 3339.
    pub loaded_at: Option<String>,
    /// The live version's ABI.
    pub abi: Option<Abi>,
    /// Whether the live version's fresh instances start from the state its
    /// `setup` left at load (`preinitialize = true`, and it could be
    /// snapshotted), rather than running `setup` before every event.
    pub preinitialized: Option<bool>,
    /// Warm instances idle now, for a live version with `[reuse]`.
    pub warm: Option<usize>,
    /// What the live version subscribed to.
    pub subscription: Option<Subscription>,
    /// What a pre verdict does when this hook fails.
    pub on_error: Option<OnError>,
    /// Whether its vetoes stop the operation (`enforce`) or are only
    /// reported (`monitor`).
    pub mode: Option<HookMode>,
    /// Whether pre events wait for this hook's deliveries.
    pub wait: Option<bool>,
    /// For a live hook subscribed to pre events (a gate): which entry points
    /// into the orchestrator wait for its verdict, and which do not, as the
    /// orchestrator's plugins report them (see [`crate::coverage`]).
    pub coverage: Option<crate::coverage::GateCoverage>,
    /// Why the latest file failed to load, if it did.
    pub last_error: Option<LoadError>,
    /// Events handled.
    pub calls: u64,
    /// Events on which the hook failed (timeouts included).
    pub errors: u64,
    /// Events on which the hook hit its deadline.
    pub timeouts: u64,
    /// Pre events it vetoed (enforced).
    pub denials: u64,
    /// Pre events it would have vetoed, in monitor mode.
    pub would_deny: u64,
    /// Versions of this hook loaded successfully since the engine started.
    pub loads: u64,
    /// Attempts to load a new version that failed since the engine started.
    pub load_failures: u64,
}

impl Registry {
    /// Status of every hook, live or failed, by name.
    pub(crate) fn statuses(&self) -> Vec<HookStatus> {
        let snapshot = self.snapshot();
        let mut names: Vec<&String> = snapshot.live.keys().chain(snapshot.failed.keys()).collect();
        names.sort();
        names.dedup();
        let stats = self.stats.lock().unwrap();
        names
            .into_iter()
            .map(|name| {
                let live = snapshot.live.get(name);
                let last_error = snapshot.failed.get(name).cloned();
                let counters = stats.get(name).cloned().unwrap_or_default();
                HookStatus {
                    name: name.clone(),
                    state: if live.is_some() {
                        HookState::Live
                    } else {
                        HookState::Failed
                    },
                    file: live
                        .map(|h| h.file.clone())
                        .or_else(|| last_error.as_ref().map(|e| e.file.with_extension("wasm")))
                        .unwrap_or_default(),
                    hash: live.map(|h| h.hash.clone()),
                    signed_by: live.and_then(|h| h.signed_by.clone()),
                    loaded_at: live
                        .map(|h| humantime::format_rfc3339_millis(h.loaded_at).to_string()),
                    abi: live.map(|h| match h.prepared.linked {
                        Linked::Hook(_) | Linked::Initialized(_) => Abi::Component,
                        Linked::Command(_) => Abi::Command,
                    }),
                    preinitialized: live
                        .map(|h| matches!(h.prepared.linked, Linked::Initialized(_))),
                    warm: live.and_then(|h| h.prepared.warm.as_ref().map(|p| p.idle())),
                    subscription: live.map(|h| h.subscription.clone()),
                    on_error: live.map(|h| h.config.on_error),
                    mode: live.map(|h| h.config.mode),
                    wait: live.map(|h| h.config.wait),
                    // Filled in by the engine, which holds the reports.
                    coverage: None,
                    last_error,
                    calls: counters.calls.get(),
                    errors: counters.errors.get(),
                    timeouts: counters.timeouts.get(),
                    denials: counters.denials.get(),
                    would_deny: counters.would_deny.get(),
                    loads: counters.loads.get(),
                    load_failures: counters.load_failures.get(),
                }
            })
            .collect()
    }
}
