//! Why a hooks bucket could not be used.

use std::path::PathBuf;
use std::sync::Arc;

/// A hooks bucket (`[hooks_bucket]`, `wasmhooks hooks push`) that could not
/// be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// NATS could not be reached.
    #[error("hooks bucket: {0}")]
    Connect(#[source] crate::queue::QueueError),
    /// This engine has not reached the bucket yet (it keeps trying).
    #[error("hooks bucket at {url}: not connected yet (the engine keeps trying)")]
    NotConnected {
        /// The server URL(s).
        url: String,
    },
    /// A JetStream request failed.
    #[error("hooks bucket at {url}: cannot {what}: {source}")]
    Nats {
        /// The server URL(s).
        url: String,
        /// What was being done.
        what: String,
        /// What NATS said.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A hooks folder to push could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A hooks folder with no hook in it: pushing it would unload every
    /// hook of every engine.
    #[error(
        "{} holds no NAME.wasm: a set without hooks would unload every hook on every engine",
        path.display()
    )]
    Empty {
        /// The folder.
        path: PathBuf,
    },
    /// A hook's `NAME.toml` whose secret would not work, or not stay
    /// secret, in a bucket.
    #[error("{}: {reason}", path.display())]
    Secret {
        /// The `NAME.toml`.
        path: PathBuf,
        /// Why, and what to write instead.
        reason: String,
    },
    /// A set in the bucket that is not one `wasmhooks hooks push` wrote.
    #[error("set {version} in the hooks bucket is malformed: {reason}")]
    Malformed {
        /// The set's version.
        version: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file of a set whose content is not what the set says.
    #[error(
        "{file} of set {version}: its content is not the one the set names (sha256 {expected}, got {got}); push the set again"
    )]
    Digest {
        /// The set's version.
        version: u64,
        /// The file's name in the set.
        file: String,
        /// The digest the set names.
        expected: String,
        /// The content's digest.
        got: String,
    },
    /// A file the set names that the bucket does not hold (deleted).
    #[error("{file} of set {version} is not in the hooks bucket (deleted?): push the set again")]
    Missing {
        /// The set's version.
        version: u64,
        /// The file's name in the set.
        file: String,
    },
    /// A file of a set larger than any such file may be.
    #[error("{file} of set {version} is {size} bytes, more than the {max} a hook's file may have")]
    TooBig {
        /// The set's version.
        version: u64,
        /// The file's name in the set.
        file: String,
        /// Its size.
        size: u64,
        /// The most.
        max: u64,
    },
    /// The engine's copy of the sets (in `state_dir`) could not be written.
    #[error("cannot keep the hooks bucket's sets in {}: {source}", path.display())]
    Local {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl BucketError {
    /// Whether the set itself is at fault (refused: trying again would
    /// not help), rather than NATS or the disk (tried again).
    pub(super) fn is_the_sets_fault(&self) -> bool {
        matches!(
            self,
            BucketError::Malformed { .. }
                | BucketError::Digest { .. }
                | BucketError::Missing { .. }
                | BucketError::TooBig { .. }
        )
    }

    pub(super) fn nats(
        url: &str,
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> BucketError {
        BucketError::Nats {
            url: url.to_owned(),
            what: what.into(),
            source: Arc::new(source),
        }
    }

    pub(super) fn local(path: &std::path::Path, source: std::io::Error) -> BucketError {
        BucketError::Local {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }
}
