//! A hook's `NAME.toml` ([`HookConfig`]), the limits it runs under, and its
//! signing secrets.

use super::SettingsError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Per-call limits: defaults, and the most a hook's `NAME.toml` may ask for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time one event may take in a hook, `setup` included, in ms.
    pub deadline_ms: u64,
    /// Memory one hook instance may use, in MiB.
    pub memory_mib: u32,
    /// The largest `deadline_ms` a `NAME.toml` may set.
    pub max_deadline_ms: u64,
    /// The largest `memory_mib` a `NAME.toml` may set. Also sizes the pool's
    /// per-instance memory slots.
    pub max_memory_mib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 100,
            memory_mib: 64,
            max_deadline_ms: 10_000,
            max_memory_mib: 512,
        }
    }
}

/// What a pre event's verdict does when this hook fails (traps, times out or
/// returns an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The operation goes ahead (the default: a broken hook does not block the orchestrator).
    #[default]
    Allow,
    /// The operation is vetoed: for gate hooks that must say yes.
    Deny,
}

/// Whether a hook's vetoes stop the operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// A veto stops the operation (the default).
    #[default]
    Enforce,
    /// A veto (its `on_error` included) is counted, logged and shown in the
    /// verdict's `would_deny`, and the operation goes ahead: for trying a
    /// new gate on live traffic before enforcing it.
    Monitor,
}

/// A hook's `NAME.toml`: its settings, and what the operator decides for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Handed to the hook's `setup` as JSON text.
    #[serde(default)]
    pub settings: toml::Table,
    /// Wall-clock deadline per event, in ms. Defaults to the engine's.
    pub deadline_ms: Option<u64>,
    /// Memory cap, in MiB. Defaults to the engine's.
    pub memory_mib: Option<u32>,
    /// For pre events: send this hook's deliveries before the verdict returns,
    /// like the orchestrator's "wait for response" option. A delivery that
    /// fails for good then counts as a hook failure (see `on_error`).
    #[serde(default)]
    pub wait: bool,
    /// What a pre event's verdict does when this hook fails.
    #[serde(default)]
    pub on_error: OnError,
    /// `enforce` (the default) or `monitor`: whether this hook's vetoes stop
    /// the operation, or are only counted and reported as `would_deny`.
    #[serde(default)]
    pub mode: HookMode,
    /// Where this hook's deliveries may go beyond public addresses:
    /// hostnames (`cmdb.internal`, `*.corp.example`), IPs and CIDRs
    /// (`10.0.0.0/8`). Loopback, private, link-local and other non-public
    /// addresses are refused otherwise.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Signs this hook's deliveries per Standard Webhooks: a `whsec_…`
    /// secret (HMAC-SHA256) or a `whsk_…` key (ed25519), or a list of them
    /// while rotating (each one signs). Each may instead be `env:NAME` or
    /// `file:PATH`, read at load. Never logged.
    #[serde(default, skip_serializing)]
    pub secret: Secrets,
    /// For a WASI command hook only, which has no `setup` to say so: the
    /// events it wants. A component hook's `setup` returns its own.
    pub subscription: Option<SubscriptionConfig>,
    /// Serve events from warm instances instead of a fresh one per event
    /// (component hooks only). Faster for heavy runtimes (Python, JS), at
    /// the cost of isolation: state left by one event is seen by the next.
    pub reuse: Option<ReuseConfig>,
    /// Start every fresh instance from the state `setup` left at load (a
    /// snapshot made with wasmtime-wizer) instead of running `setup` before
    /// each event (component hooks only). Pays off when `setup` is costly;
    /// costs two more compiles when the hook loads, and freezes whatever
    /// `setup` read from a clock or random source. A hook that cannot be
    /// snapshotted is set up per event, and the log says why.
    #[serde(default)]
    pub preinitialize: bool,
}

/// `[reuse]` of a hook's `NAME.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseConfig {
    /// Events one instance serves before it is replaced (1..=100000). It is
    /// replaced sooner after a trap, a timeout or hitting the memory cap.
    pub events: u32,
    /// Warm instances kept for this hook (1..=16).
    #[serde(default = "one")]
    pub instances: u32,
    /// Seconds a warm instance may sit idle (1..=86400, default 60). Then it
    /// is dropped and its memory given back; the next event sets up a new one.
    #[serde(default = "a_minute")]
    pub idle_secs: u32,
}

fn one() -> u32 {
    1
}

fn a_minute() -> u32 {
    60
}

/// `[subscription]` of a WASI command hook's `NAME.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Method globs, e.g. `["vm.*", "backupNg.runJob"]`.
    pub methods: Vec<String>,
    /// Phases wanted: `["pre"]`, `["post"]` or both.
    pub phases: Vec<crate::event::Phase>,
}

/// One signing secret, or several during a rotation.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Secrets {
    /// No signing.
    #[default]
    None,
    /// One secret.
    One(String),
    /// Several: each one signs every delivery.
    Many(Vec<String>),
}

impl Secrets {
    /// The secrets, in order, as written.
    pub fn list(&self) -> Vec<&str> {
        match self {
            Secrets::None => vec![],
            Secrets::One(s) => vec![s],
            Secrets::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// The secrets, with references read: `env:NAME` is the environment
    /// variable NAME, `file:PATH` the content of a file (trimmed; a relative
    /// PATH is in `dir`, the hooks folder). So `NAME.toml` need not hold a
    /// secret itself. Read when the hook loads.
    pub fn resolve(&self, dir: &Path) -> Result<Vec<String>, SettingsError> {
        self.list()
            .into_iter()
            .map(|secret| {
                if let Some(var) = secret.strip_prefix("env:") {
                    std::env::var(var).map_err(|_| {
                        SettingsError::Secret(format!(
                            "the environment variable {var} is not set (or not UTF-8)"
                        ))
                    })
                } else if let Some(file) = secret.strip_prefix("file:") {
                    let path = dir.join(file);
                    let unreadable = |why: String| {
                        SettingsError::Secret(format!("cannot read {}: {why}", path.display()))
                    };
                    let bytes = crate::files::read_regular(&path, crate::files::MAX_SECRET_BYTES)
                        .map_err(|e| unreadable(e.to_string()))?;
                    String::from_utf8(bytes)
                        .map(|text| text.trim().to_owned())
                        .map_err(|_| unreadable("it is not UTF-8 text".into()))
                } else {
                    Ok(secret.to_owned())
                }
            })
            .collect()
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} secrets, redacted]", self.list().len())
    }
}

/// Hides anything that looks like a signing secret (a TOML error quotes
/// the line at fault, which may hold one).
fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["whsec_", "whsk_"]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .min()
    {
        let (i, prefix) = at;
        out.push_str(&rest[..i + prefix]);
        out.push('…');
        rest = &rest[i + prefix..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c)))
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A hook's limits, resolved against the engine's defaults and maxima.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HookLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
}

impl HookConfig {
    /// Parses `NAME.toml` text.
    pub fn from_toml(text: &str) -> Result<HookConfig, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::Toml(redact_secrets(&e.to_string())))
    }

    /// The settings as the JSON text `setup` receives.
    pub fn settings_json(&self) -> String {
        serde_json::to_string(&self.settings).expect("TOML values always convert to JSON")
    }

    /// Resolves limits, refusing values above the engine's maxima.
    pub(crate) fn limits(&self, engine: &Limits) -> Result<HookLimits, SettingsError> {
        let deadline_ms = self.deadline_ms.unwrap_or(engine.deadline_ms);
        if deadline_ms == 0 || deadline_ms > engine.max_deadline_ms {
            return Err(SettingsError::field(
                "deadline_ms",
                format!("{deadline_ms} is outside 1..={}", engine.max_deadline_ms),
            ));
        }
        let memory_mib = self.memory_mib.unwrap_or(engine.memory_mib);
        if memory_mib == 0 || memory_mib > engine.max_memory_mib {
            return Err(SettingsError::field(
                "memory_mib",
                format!("{memory_mib} is outside 1..={}", engine.max_memory_mib),
            ));
        }
        if let Some(r) = self.reuse
            && (!(1..=100_000).contains(&r.events)
                || !(1..=16).contains(&r.instances)
                || !(1..=86_400).contains(&r.idle_secs))
        {
            return Err(SettingsError::field(
                "[reuse]",
                format!(
                    "events = {}, instances = {} and idle_secs = {} must be within \
                     1..=100000, 1..=16 and 1..=86400",
                    r.events, r.instances, r.idle_secs
                ),
            ));
        }
        Ok(HookLimits {
            deadline: Duration::from_millis(deadline_ms),
            memory_bytes: memory_mib as usize * 1024 * 1024,
        })
    }
}
