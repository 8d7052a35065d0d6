//! The archive (`[archive]`, opt-in): every accepted event (system events
//! aside), as the hooks saw it and masked, with what each live hook
//! version decided on it, kept in the queue's store (see
//! [`Queue::archive`]) within its days and size. `wasmhooks simulate`
//! replays it through a new hook version; `wasmhooks events export` turns
//! it into test fixtures.
//!
//! Here the record; `writer.rs` keeps records off the event's path, in
//! batches; `read.rs` reads them back, for operators.

mod read;
mod writer;

pub use read::{Archive, ArchiveError};
pub(crate) use writer::Archiver;

use crate::activity::HookActivity;
use crate::event::Phase;
use serde::{Deserialize, Serialize};

/// One archived event: what `wasmhooks events export` prints, a line each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ArchivedEvent {
    /// Its place in the archive: increasing, in the order archived.
    #[serde(default)]
    pub seq: u64,
    /// When its hooks had decided (Unix ms).
    pub at_ms: u64,
    /// The event's method, e.g. `vm.start`.
    pub method: String,
    /// The event's phase.
    pub phase: Phase,
    /// The event's call id.
    pub call_id: String,
    /// For a pre event: whether the operation was allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    /// For a pre event that was vetoed: the hook that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// What each subscribed hook decided, with its version and receivers,
    /// in hook name order; empty if no hook subscribed to it.
    pub hooks: Vec<HookActivity>,
    /// The event as the hooks received it, with `[archive] mask` applied.
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub event: serde_json::Value,
}

impl ArchivedEvent {
    /// What `hook` decided on it, if it was subscribed.
    pub fn decision_of(&self, hook: &str) -> Option<&HookActivity> {
        self.hooks.iter().find(|h| h.hook == hook)
    }
}
