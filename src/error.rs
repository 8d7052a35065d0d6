//! Typed errors. Each one says which hook, file or event it is about.

use crate::config::SettingsError;
use crate::event::{EventError, Phase};
use crate::hooks::LoadError;
use crate::run::CallError;
use std::path::PathBuf;

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
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The hooks folder cannot be watched for changes.
    #[error("cannot watch the hooks folder: {0}")]
    Watch(#[from] crate::hooks::WatchError),
    /// The engine's own work on an event failed (a bug: hooks' panics are
    /// caught per hook). The event was not accepted; send it again.
    #[error(
        "the engine failed while accepting a {phase} event (a bug; the log has its panic); send it again"
    )]
    Panicked {
        /// The event's phase.
        phase: Phase,
    },
    /// A pre event recognised as sent again, whose first copy ended
    /// without a verdict (the engine stopped, or failed, while deciding
    /// it). Send it again.
    #[error(
        "the first copy of pre event {method} (call {call_id}) ended without a verdict; send it again"
    )]
    FirstCopyFailed {
        /// The event's method.
        method: String,
        /// Its call id.
        call_id: String,
    },
    /// The durable queue (state database) failed: the event was not accepted.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// The archive could not be read.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// The hooks bucket (`[hooks_bucket]`) could not be used.
    #[error(transparent)]
    Bucket(#[from] crate::hooks::bucket::BucketError),
    /// A source (`[sources]`) could not start: its token or CA file.
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
}

impl From<crate::hooks::HooksDirError> for Error {
    fn from(e: crate::hooks::HooksDirError) -> Self {
        Error::HooksDir {
            path: e.path,
            source: e.source,
        }
    }
}

impl From<crate::ingest::IngestError> for Error {
    fn from(e: crate::ingest::IngestError) -> Self {
        use crate::ingest::IngestError;
        match e {
            IngestError::Queue(e) => Error::Queue(e),
            IngestError::Panicked { phase } => Error::Panicked { phase },
            IngestError::FirstCopyFailed { method, call_id } => {
                Error::FirstCopyFailed { method, call_id }
            }
        }
    }
}
