//! `queue`: which backend holds the deliveries.

use super::SettingsError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Which queue backend an engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    /// SQLite: `wasmhooks.db` in `state_dir` (in memory if that is `None`).
    #[default]
    Sqlite,
    /// SQLite in memory, whatever `state_dir` says.
    Memory,
    /// NATS JetStream, which several engines can share: `queue = { nats =
    /// { url = "nats://127.0.0.1:4222" } }`. `state_dir` is not used for
    /// the queue then.
    Nats(NatsConfig),
}

/// A queue on NATS JetStream (see the README, "Several engines").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The servers, comma-separated (`nats://a:4222,nats://b:4222`). A user
    /// and password, or a token, may be in a URL (`nats://user:pass@host`).
    pub url: String,
    /// Copies JetStream keeps of each stream: 1, or 3 (or 5) on a cluster,
    /// so that an accepted event survives losing a node. Applies when the
    /// streams are created; an existing stream keeps its own.
    pub replicas: usize,
    /// Prefix of the streams (`PREFIX_DELIVERIES`…) and subjects
    /// (`PREFIX.d.…`), so that several deployments can share one NATS
    /// account: letters, digits and `_` only.
    pub prefix: String,
    /// How long an engine's claim on a delivery lasts without being renewed
    /// (ms): an engine that dies mid-attempt loses its claims after this
    /// (plus `delivery.timeout_ms` for a delivery it was sending as it
    /// queued it), and another engine sends them. A live engine renews its
    /// claims every third of it.
    pub ack_wait_ms: u64,
    /// A NATS credentials file (`.creds`: a user JWT and its key), if the
    /// server wants one.
    pub credentials: Option<PathBuf>,
    /// How long a request to JetStream is tried again while a stream (or
    /// the cluster) has no leader, as when a node is lost and a new leader
    /// is elected (ms): meanwhile the caller waits instead of being refused
    /// (503). Past it, the caller is refused. 0 refuses at once. An
    /// election took 5 to 8.5 s in this project's tests (a node SIGKILLed
    /// in a cluster of three); keep it below the callers' patience (the
    /// XO plugin waits 15 s for a post).
    pub election_wait_ms: u64,
    /// How long an accepted event waits for JetStream before it is kept on
    /// this engine's disk instead (`nats-spill.db` in the state folder,
    /// synced) and answered, then forwarded once JetStream has a leader
    /// again (ms). An election takes 4 to 9 s (nats-server's own timeout):
    /// this keeps callers from waiting through it, at the cost of holding
    /// those events on one disk rather than `replicas` for that time. Only
    /// for an election: once the oldest event kept has waited
    /// `election_wait_ms`, events wait and are refused as without it.
    /// 0: never; every accepted event is on the cluster first.
    pub spill_after_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            prefix: "WASMHOOKS".into(),
            ack_wait_ms: 30_000,
            credentials: None,
            election_wait_ms: 12_000,
            spill_after_ms: 1_000,
        }
    }
}

impl NatsConfig {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        check_nats("queue.nats", &self.url, self.replicas, &self.prefix)?;
        for (field, ms) in [
            ("queue.nats.election_wait_ms", self.election_wait_ms),
            ("queue.nats.spill_after_ms", self.spill_after_ms),
        ] {
            if ms > 60_000 {
                return Err(SettingsError::field(
                    field,
                    format!("{ms} is more than a minute: a caller would wait that long"),
                ));
            }
        }
        if self.ack_wait_ms < 1_000 {
            return Err(SettingsError::field(
                "queue.nats.ack_wait_ms",
                format!("{} is less than a second", self.ack_wait_ms),
            ));
        }
        Ok(())
    }
}

/// Checks what a queue on NATS and a hooks bucket share: servers, a
/// replica count JetStream takes, and a prefix its names can hold.
pub(super) fn check_nats(
    section: &str,
    url: &str,
    replicas: usize,
    prefix: &str,
) -> Result<(), SettingsError> {
    if url.trim().is_empty() {
        return Err(SettingsError::field(&format!("{section}.url"), "is empty"));
    }
    if !matches!(replicas, 1..=5) {
        return Err(SettingsError::field(
            &format!("{section}.replicas"),
            format!("{replicas} is not between 1 and 5"),
        ));
    }
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(SettingsError::field(
            &format!("{section}.prefix"),
            format!("{prefix:?} must be letters, digits and _ only"),
        ));
    }
    Ok(())
}

/// What opening a queue needs of the engine's settings, and no more.
#[derive(Debug, Clone)]
pub(crate) struct QueueSettings {
    /// The backend.
    pub queue: QueueConfig,
    /// Where SQLite keeps its file (`None`: in memory).
    pub state_dir: Option<PathBuf>,
    /// Whether SQLite syncs every commit to disk.
    pub fsync: bool,
    /// The largest delivery record: a body, its headers and room for the rest.
    pub max_record_bytes: usize,
    /// How long dead letters are kept.
    pub dead_letter_age: Duration,
    /// How long one attempt may take (`delivery.timeout_ms`).
    pub attempt_timeout: Duration,
    /// What is kept of attempts and delivered deliveries.
    pub history: History,
}

/// Most bytes of a delivery's attempts kept in its NATS message (which
/// holds the delivery, its body included): the oldest go first past it.
pub(crate) const HISTORY_MAX_BYTES: usize = 256 * 1024;

/// What a queue keeps of attempts and of delivered deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct History {
    /// Attempts kept per delivery, the latest (`delivery.history_attempts`).
    pub attempts: usize,
    /// How long a delivered delivery is kept (`delivery.history_hours`);
    /// zero: not at all.
    pub delivered: Duration,
}

impl Default for History {
    /// What `[delivery]`'s defaults keep.
    fn default() -> History {
        History::of(&super::DeliveryConfig::default())
    }
}

impl History {
    /// What `delivery` says to keep.
    pub(crate) fn of(delivery: &super::DeliveryConfig) -> History {
        History {
            attempts: delivery.history_attempts as usize,
            delivered: Duration::from_secs(u64::from(delivery.history_hours) * 3600),
        }
    }
}

impl super::Config {
    /// The part of these settings a queue is opened with.
    pub(crate) fn queue_settings(&self) -> QueueSettings {
        QueueSettings {
            queue: self.queue.clone(),
            state_dir: self.state_dir.clone(),
            fsync: self.fsync,
            max_record_bytes: self.max_body_bytes
                + self.max_header_bytes
                + 8192
                + if self.delivery.history_attempts > 0 {
                    HISTORY_MAX_BYTES
                } else {
                    0
                },
            dead_letter_age: Duration::from_secs(
                u64::from(self.delivery.dead_letter_days) * 86_400,
            ),
            attempt_timeout: Duration::from_millis(self.delivery.timeout_ms),
            history: History::of(&self.delivery),
        }
    }
}
