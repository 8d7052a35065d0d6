//! Why an event was not accepted.

use crate::event::Phase;
use crate::queue::QueueError;

/// An event was not accepted; the caller may send it again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// The durable queue failed: nothing was committed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The engine's own work on the event failed (a bug: hooks' panics are
    /// caught per hook).
    #[error("panicked while accepting a {phase} event")]
    Panicked {
        /// The event's phase.
        phase: Phase,
    },
    /// A pre event recognised as sent again, whose first copy ended without
    /// a verdict.
    #[error("first copy of {method} ({call_id}) failed")]
    FirstCopyFailed {
        /// The event's method.
        method: String,
        /// Its call id.
        call_id: String,
    },
}
