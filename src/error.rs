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
    #[error("cannot set up the WebAssembly runtime: {0}")]
    Runtime(String),
    /// The durable queue (state database) failed: the event was not accepted.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
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
