//! Typed errors. Each one says which hook, file or event it is about.

use crate::event::{EventError, Phase};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Anything the engine's public API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine's settings are wrong.
    #[error("invalid config: {0}")]
    Config(#[from] SettingsError),
    /// The event was refused.
    #[error(transparent)]
    Event(#[from] EventError),
    /// `pre()` was given a post or observed event, or `post()` a pre event.
    #[error("{method} is an event of phase {actual}, but {expected}() takes {expected} events")]
    WrongPhase {
        /// The event's method.
        method: String,
        /// The phase the call takes.
        expected: Phase,
        /// The event's phase.
        actual: Phase,
    },
    /// A hook could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A hook failed while handling an event.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The hooks folder could not be read.
    #[error("cannot read hooks folder {}: {source}", path.display())]
    HooksDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The WebAssembly runtime could not be set up.
    #[error("cannot set up the WebAssembly runtime: {0}")]
    Runtime(String),
    /// The durable queue (state database) failed: the event was not accepted.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// A source (`[sources]`) could not start: its token or CA file.
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
}

/// Settings that were refused: the engine's config, a hook's `NAME.toml`,
/// or the API token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A value out of range, or at odds with another.
    #[error("{field}: {reason}")]
    Field {
        /// The setting, e.g. `dedup_window_secs` or `delivery.allow_hosts`.
        field: String,
        /// What is wrong with it, and what would do.
        reason: String,
    },
    /// A TOML document that does not parse (any secret in it hidden).
    #[error("{0}")]
    Toml(String),
    /// A secret given as `env:NAME` or `file:PATH` that cannot be read.
    #[error("secret: {0}")]
    Secret(String),
    /// An API token too short, or with whitespace in it.
    #[error(
        "the API token must be at least {min} characters, without spaces \
         (e.g. the output of `openssl rand -hex 32`)"
    )]
    Token {
        /// The fewest characters a token may have.
        min: usize,
    },
}

impl SettingsError {
    pub(crate) fn field(field: &str, reason: impl Into<String>) -> SettingsError {
        SettingsError::Field {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The step at which loading a hook failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading `NAME.wasm` or `NAME.toml`.
    Read,
    /// Parsing `NAME.toml` or resolving its limits.
    Settings,
    /// Compiling the WebAssembly (not a valid component, or not WebAssembly at all).
    Compile,
    /// Linking: the component does not implement the `hook` world.
    Link,
    /// Instantiating or calling `setup`: a trap, a timeout, or settings it refused.
    Setup,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Read => "read",
            Stage::Settings => "settings",
            Stage::Compile => "compile",
            Stage::Link => "link",
            Stage::Setup => "setup",
        })
    }
}

/// A hook that could not be loaded: which one, from which file, at which step, and why.
#[derive(Debug, Clone, thiserror::Error, Serialize, utoipa::ToSchema)]
#[error("hook `{hook}` ({}): {stage} failed: {reason}", file.display())]
pub struct LoadError {
    /// The hook's name (the file name without `.wasm`).
    pub hook: String,
    /// The file at fault: `NAME.wasm` or `NAME.toml`.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// The step that failed.
    pub stage: Stage,
    /// What went wrong and, where it helps, what to do.
    pub reason: String,
}

/// Which hook was handling which event when a call failed.
#[derive(Debug, Clone, Serialize)]
pub struct CallSite {
    /// The hook's name.
    pub hook: String,
    /// The event's method.
    pub method: String,
    /// The event's call id.
    pub call_id: String,
    /// The event's phase.
    pub phase: Phase,
}

impl fmt::Display for CallSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hook `{}` on {} {} event {}",
            self.hook, self.method, self.phase, self.call_id
        )
    }
}

/// A hook that failed on one event. The engine and the other hooks carry on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The hook ran past its deadline and was stopped.
    #[error(
        "{site}: stopped at its deadline of {deadline:?}, after running {ran:.1?} (raise `deadline_ms` in its .toml if it needs longer)"
    )]
    Timeout {
        /// Where.
        site: CallSite,
        /// The deadline it had.
        deadline: Duration,
        /// The running time it was charged when it was stopped: its
        /// deadline, plus the little it takes to notice. Its wasm's CPU
        /// time and its host calls count; waiting for a CPU does not.
        ran: Duration,
    },
    /// The hook tried to use more memory than its cap.
    #[error(
        "{site}: exceeded its memory cap of {cap_mib} MiB (raise `memory_mib` in its .toml if it needs more)"
    )]
    MemoryCap {
        /// Where.
        site: CallSite,
        /// The cap it had.
        cap_mib: usize,
    },
    /// The hook trapped (a panic, an unreachable, an out-of-bounds access…).
    #[error("{site}: trapped: {message}")]
    Trap {
        /// Where.
        site: CallSite,
        /// The trap and, where known, the guest backtrace.
        message: String,
    },
    /// The hook returned an error from `handle` (or `setup` refused its settings).
    #[error("{site}: returned an error: {message}")]
    Returned {
        /// Where.
        site: CallSite,
        /// The hook's own message.
        message: String,
    },
    /// The hook's answer was not usable, e.g. a delivery URL that is not http(s).
    #[error("{site}: {message}")]
    BadOutcome {
        /// Where.
        site: CallSite,
        /// What was wrong.
        message: String,
    },
    /// The engine itself failed (panicked) on this hook's outcome: a bug in
    /// wasmhooks, contained to this hook and this event.
    #[error(
        "{site}: the engine failed on this hook's outcome (a bug in wasmhooks; please report it): {message}"
    )]
    Internal {
        /// Where.
        site: CallSite,
        /// The panic's message.
        message: String,
    },
}

impl CallError {
    /// Which hook and event.
    pub fn site(&self) -> &CallSite {
        match self {
            CallError::Timeout { site, .. }
            | CallError::MemoryCap { site, .. }
            | CallError::Trap { site, .. }
            | CallError::Returned { site, .. }
            | CallError::BadOutcome { site, .. }
            | CallError::Internal { site, .. } => site,
        }
    }

    /// A short word for metrics and the status API.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryCap { .. } => "memory",
            CallError::Trap { .. } => "trap",
            CallError::Returned { .. } => "error",
            CallError::BadOutcome { .. } => "bad-outcome",
            CallError::Internal { .. } => "internal",
        }
    }
}
