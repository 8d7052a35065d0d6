//! `[archive]`: the events the engine accepted, and what each hook decided
//! on them, kept for `wasmhooks simulate` and for test fixtures.

use super::SettingsError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[archive]`: keep every accepted event (system events aside), as the
/// hooks saw it and with `mask` applied, together with what each live hook
/// version decided on it. Off unless the section is there. Kept in the
/// queue's store: the `archive` table of `wasmhooks.db` in the state folder,
/// or the `PREFIX_ARCHIVE` stream on NATS JetStream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Days an event is kept (1 to 366); older ones are dropped first.
    pub days: u32,
    /// Most mebibytes of archived events (their JSON) kept; past it the
    /// oldest are dropped, whatever their age.
    pub max_mib: u64,
    /// Keys (globs, case-insensitive) whose values are replaced by
    /// `"* masked *"` wherever they are in an event before it is kept:
    /// credentials a caller sent that no hook needs replayed. XO masks
    /// password-like parameters itself, and `redact_results` has already
    /// applied to post events' results.
    pub mask: Vec<String>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            days: 30,
            max_mib: 1024,
            mask: [
                "*password*",
                "*secret*",
                "*token*",
                "authorization",
                "cookie",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Most days the archive may keep.
const MAX_DAYS: u32 = 366;

/// How much an archive keeps: what its store is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArchiveBounds {
    /// Events older than this go.
    pub max_age: Duration,
    /// Past this many bytes of records, the oldest go.
    pub max_bytes: u64,
}

impl ArchiveConfig {
    /// Checks the bounds.
    pub(crate) fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=MAX_DAYS).contains(&self.days) {
            return Err(SettingsError::field(
                "archive.days",
                format!("{} is not between 1 and {MAX_DAYS}", self.days),
            ));
        }
        if !(1..=1024 * 1024).contains(&self.max_mib) {
            return Err(SettingsError::field(
                "archive.max_mib",
                format!("{} is not between 1 and 1048576 (1 TiB)", self.max_mib),
            ));
        }
        Ok(())
    }

    /// The bounds the store keeps to.
    pub(crate) fn bounds(&self) -> ArchiveBounds {
        ArchiveBounds {
            max_age: Duration::from_secs(u64::from(self.days) * 86_400),
            max_bytes: self.max_mib * 1024 * 1024,
        }
    }
}
