//! Why a hook did not load, and why the hooks folder could not be read.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// The step at which loading a hook failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading `NAME.wasm` or `NAME.toml`.
    Read,
    /// Checking `NAME.sig` against the keys in `[trust]`: missing, made by
    /// another key, or not matching the module.
    Signature,
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
            Stage::Signature => "signature",
            Stage::Settings => "settings",
            Stage::Compile => "compile",
            Stage::Link => "link",
            Stage::Setup => "setup",
        })
    }
}

/// A hook that could not be loaded: which one, from which file, at which step, and why.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[error("hook `{hook}` ({}): {stage} failed: {reason}", file.display())]
pub struct LoadError {
    /// The hook's name (the file name without `.wasm`).
    pub hook: String,
    /// The file at fault: `NAME.wasm`, `NAME.toml` or `NAME.sig`.
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub file: PathBuf,
    /// The step that failed.
    pub stage: Stage,
    /// What went wrong and, where it helps, what to do.
    pub reason: String,
}

/// The hooks folder could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read hooks folder {}: {source}", path.display())]
pub(crate) struct HooksDirError {
    /// The folder.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The hooks folder cannot be watched for changes.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The operating system's file watcher could not start (on Linux, the
    /// inotify instance limit: `fs.inotify.max_user_instances`).
    #[error("cannot start the file watcher: {0}")]
    Start(#[source] notify::Error),
    /// The folder that holds the hooks folder cannot be watched.
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
}
