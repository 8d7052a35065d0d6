//! `hooks_bucket`: hooks from a shared bucket on NATS JetStream.

use super::SettingsError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Load the hooks from a shared bucket on NATS JetStream, where `wasmhooks
/// hooks push` publishes a folder as one versioned set, instead of from
/// `hooks_dir`. Every engine on the bucket switches to a new set as it is
/// pushed; one that fails to load keeps its last good set. The last good
/// set is kept in `state_dir`, so an engine restarts with it even while
/// NATS is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketConfig {
    /// The servers, comma-separated (`nats://a:4222,nats://b:4222`).
    pub url: String,
    /// Prefix of the bucket's names (`PREFIX_HOOK_SETS`,
    /// `PREFIX_HOOK_FILES`, `PREFIX_ENGINES`): letters, digits and `_`.
    pub prefix: String,
    /// Copies JetStream keeps of the bucket (1, or 3 on a cluster), when
    /// it is created.
    pub replicas: usize,
    /// A NATS credentials file (`.creds`), if the server wants one.
    pub credentials: Option<PathBuf>,
}

impl Default for BucketConfig {
    fn default() -> Self {
        BucketConfig {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "WASMHOOKS".into(),
            replicas: 1,
            credentials: None,
        }
    }
}

impl BucketConfig {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        super::queue::check_nats("hooks_bucket", &self.url, self.replicas, &self.prefix)
    }
}
