//! Why a hook failed on one event.

use crate::event::Phase;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

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

/// A hook's outcome beyond the engine's caps, refused before anything is
/// built from it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutcomeError {
    /// Too many deliveries for one event.
    #[error(
        "asked for {asked} deliveries; at most {max} are allowed per event (max_deliveries_per_event)"
    )]
    Deliveries { asked: usize, max: usize },
    /// A body too big.
    #[error(
        "a delivery to {url} has a body of {bytes} bytes; at most {max} are allowed (max_body_bytes)"
    )]
    Body {
        url: String,
        bytes: usize,
        max: usize,
    },
    /// Too many headers on one delivery.
    #[error(
        "a delivery to {url} has {count} headers; at most {max} are allowed (max_headers_per_delivery)"
    )]
    Headers {
        url: String,
        count: usize,
        max: usize,
    },
    /// Headers too big, in all.
    #[error(
        "a delivery to {url} has {bytes} bytes of headers; at most {max} are allowed (max_header_bytes)"
    )]
    HeaderBytes {
        url: String,
        bytes: usize,
        max: usize,
    },
    /// A delivery that cannot be sent as asked.
    #[error(transparent)]
    Delivery(#[from] crate::delivery::DeliveryError),
}
