//! Settings: the engine's [`Config`] and each hook's `NAME.toml` ([`HookConfig`]),
//! read once and checked once ([`Config::validate`]), and [`SettingsError`]
//! when they cannot be used.

mod archive;
mod bucket;
mod delivery;
mod error;
mod hook;
mod queue;
mod sources;
mod trust;

pub(crate) use archive::ArchiveBounds;
pub use archive::ArchiveConfig;
pub use bucket::BucketConfig;
pub use delivery::DeliveryConfig;
pub use error::SettingsError;
pub(crate) use hook::HookLimits;
pub use hook::{HookConfig, HookMode, Limits, OnError, ReuseConfig, Secrets, SubscriptionConfig};
pub(crate) use queue::{HISTORY_MAX_BYTES, History, QueueSettings};
pub use queue::{NatsConfig, QueueConfig};
pub use sources::{SecretString, SourcesConfig, SystemSourceConfig, XoSourceConfig};
pub use trust::TrustConfig;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The engine's settings. Every field has a default; a TOML or JSON file with
/// an unknown key is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder holding the hooks: `NAME.wasm`, each with an optional `NAME.toml`.
    pub hooks_dir: PathBuf,
    /// Load the hooks from a shared bucket on NATS JetStream instead of
    /// `hooks_dir` (which is then not used): off unless `[hooks_bucket]` is
    /// there. Needs `state_dir`, where the last good set is kept.
    pub hooks_bucket: Option<BucketConfig>,
    /// Watch the hooks folder and hot-reload hooks as their files change.
    /// With `watch` on, the folder may also be missing at start.
    pub watch: bool,
    /// A hook file written in place is loaded once its writer closes it, or
    /// once it has been quiet this long (ms), whichever comes first.
    pub settle_ms: u64,
    /// How often the whole folder is rescanned in case a file event was
    /// missed (ms).
    pub rescan_ms: u64,
    /// Folder for compiled hooks, keyed by content hash and engine
    /// fingerprint, so a restart does not recompile. `None` turns it off.
    pub cache_dir: Option<PathBuf>,
    /// Folder for the durable queue (`wasmhooks.db`, SQLite): accepted post
    /// events and pending deliveries survive a crash or restart there. One
    /// engine at a time may use a folder. `None` keeps the queue in memory:
    /// then a crash loses what was pending.
    pub state_dir: Option<PathBuf>,
    /// Which queue holds accepted events and deliveries: `"sqlite"` (the
    /// default: `wasmhooks.db` in `state_dir`, or in memory without one),
    /// `"memory"` (SQLite in memory: a crash loses what was pending) or
    /// `{ nats = { url = "nats://…" } }` (NATS JetStream, shared by several
    /// engines).
    pub queue: QueueConfig,
    /// How long an accepted event is recognised when it is sent again (a
    /// client retrying after a timeout), in seconds: the same method, call
    /// id and phase within this window is answered as the first one was,
    /// with no second set of deliveries. 0 accepts every copy.
    pub dedup_window_secs: u64,
    /// Wait for the disk on every commit (SQLite `synchronous = FULL`), so an
    /// accepted event survives a power loss too; `false` survives a crash of
    /// the process only, and commits faster.
    pub fsync: bool,
    /// How long `post()` waits for the hooks to finish (ms), so that their
    /// deliveries are committed in one write before it returns. Slower
    /// hooks get the event journaled instead (one more write), and finish
    /// in the background. 0 journals every event.
    pub post_inline_ms: u64,
    /// Limits for hooks whose `NAME.toml` does not set its own.
    pub limits: Limits,
    /// How many WASM calls may run at once. Sizes the instance pool; more
    /// calls wait for a free slot rather than fail.
    pub max_concurrent_calls: u32,
    /// Warm instances kept across all hooks that opt into `[reuse]`, on top
    /// of `max_concurrent_calls` in the instance pool. When they are all
    /// taken, a reusing hook runs fresh instances instead.
    pub max_warm_instances: u32,
    /// Methods (globs) whose post event `result` is replaced by
    /// `"* obfuscated *"` before any hook sees it, because it is a secret
    /// (`token.create` returns the new token in clear).
    pub redact_results: Vec<String>,
    /// Most deliveries one hook may ask for on one event. A hook asking
    /// for more fails on that event (`CallError::BadOutcome`), logged and
    /// counted, and nothing of its outcome is sent.
    pub max_deliveries_per_event: usize,
    /// Largest body one delivery may have, in bytes. Larger is a bad
    /// outcome, like too many deliveries.
    pub max_body_bytes: usize,
    /// Most headers one delivery may have; more is a bad outcome.
    pub max_headers_per_delivery: usize,
    /// Most bytes of header names and values one delivery may have; more
    /// is a bad outcome.
    pub max_header_bytes: usize,
    /// How deliveries are sent.
    pub delivery: DeliveryConfig,
    /// Limits on the HTTP API's clients.
    pub http: HttpConfig,
    /// Event sources the engine reads by itself, such as XO's event stream.
    pub sources: SourcesConfig,
    /// Keep the accepted events and what the hooks decided, for `wasmhooks
    /// simulate` and `wasmhooks events export`: off unless `[archive]` is
    /// there.
    pub archive: Option<ArchiveConfig>,
    /// Run only hooks signed by one of these keys: off unless `[trust]` is
    /// there.
    pub trust: Option<TrustConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hooks_dir: PathBuf::from("hooks"),
            hooks_bucket: None,
            watch: true,
            settle_ms: 2_000,
            rescan_ms: 30_000,
            cache_dir: default_cache_dir(),
            state_dir: default_state_dir(),
            queue: QueueConfig::Sqlite,
            dedup_window_secs: 6 * 3600,
            fsync: true,
            post_inline_ms: 20,
            limits: Limits::default(),
            max_concurrent_calls: 128,
            max_warm_instances: 16,
            redact_results: vec!["token.create".into()],
            max_deliveries_per_event: 32,
            max_body_bytes: 1024 * 1024,
            max_headers_per_delivery: 64,
            max_header_bytes: 16 * 1024,
            delivery: DeliveryConfig::default(),
            http: HttpConfig::default(),
            sources: SourcesConfig::default(),
            archive: None,
            trust: None,
        }
    }
}

/// Limits on the HTTP API's clients (`server::serve` and
/// `server::router`), so that slow or idle clients cannot hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections served at once. Past this, a few more
    /// (`server::OVERFLOW_CONNECTIONS`) get one short answer and are
    /// closed: `/healthz` as usual, anything else 503 with `Retry-After`;
    /// connections beyond those are closed at once.
    pub max_connections: usize,
    /// How long a client has to send a request's line and headers (ms),
    /// from when its connection opens or its previous answer was sent: also
    /// how long an idle keep-alive connection is kept. Then it is closed.
    pub header_timeout_ms: u64,
    /// How long a client has to send a request's body once its headers are
    /// in (ms). Then it gets 408 and the connection is closed.
    pub body_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 512,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
        }
    }
}

/// Longest dedup window: a week.
const MAX_DEDUP_WINDOW_SECS: u64 = 7 * 86_400;

/// Most attempts kept per delivery (`delivery.history_attempts`).
const MAX_HISTORY_ATTEMPTS: u32 = 100;

impl Config {
    /// Checks the settings that no type can: called once, by [`crate::Engine::new`].
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let QueueConfig::Nats(nats) = &self.queue {
            nats.validate()?;
        }
        if let Some(xo) = &self.sources.xo {
            xo.validate()?;
        }
        self.sources.system.validate()?;
        if let Some(archive) = &self.archive {
            archive.validate()?;
        }
        if let Some(bucket) = &self.hooks_bucket {
            bucket.validate()?;
            if self.state_dir.is_none() {
                return Err(SettingsError::field(
                    "hooks_bucket",
                    "needs state_dir, where the last good set of hooks is kept for a restart",
                ));
            }
        }
        if let Some(trust) = &self.trust {
            trust.public_keys()?;
        }
        if self.dedup_window_secs > MAX_DEDUP_WINDOW_SECS {
            return Err(SettingsError::field(
                "dedup_window_secs",
                format!(
                    "{} is more than a week ({MAX_DEDUP_WINDOW_SECS})",
                    self.dedup_window_secs
                ),
            ));
        }
        let d = &self.delivery;
        for (field, value) in [
            ("delivery.concurrency", d.concurrency),
            (
                "delivery.per_receiver_concurrency",
                d.per_receiver_concurrency,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::field(field, "must be at least 1"));
            }
        }
        for (field, value) in [
            ("http.max_connections", self.http.max_connections as u64),
            ("http.header_timeout_ms", self.http.header_timeout_ms),
            ("http.body_timeout_ms", self.http.body_timeout_ms),
        ] {
            if value == 0 {
                return Err(SettingsError::field(field, "must be at least 1"));
            }
        }
        if d.history_attempts > MAX_HISTORY_ATTEMPTS {
            return Err(SettingsError::field(
                "delivery.history_attempts",
                format!(
                    "{} is more than {MAX_HISTORY_ATTEMPTS}: each attempt keeps up to 4 KiB of its answer",
                    d.history_attempts
                ),
            ));
        }
        if d.per_receiver_concurrency > d.concurrency {
            return Err(SettingsError::field(
                "delivery.per_receiver_concurrency",
                format!(
                    "{} is more than delivery.concurrency = {}: one receiver could then take \
                     every slot",
                    d.per_receiver_concurrency, d.concurrency
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The keys of `[trust]`, read: `None` runs unsigned hooks.
    pub(crate) fn trusted_keys(
        &self,
    ) -> Result<Option<std::sync::Arc<[crate::trust::PublicKey]>>, SettingsError> {
        self.trust
            .as_ref()
            .map(|t| t.public_keys().map(Into::into))
            .transpose()
    }
}

/// `$XDG_STATE_HOME/wasmhooks`, else `$HOME/.local/state/wasmhooks`, else none.
pub fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("wasmhooks"))
}

/// `$XDG_CACHE_HOME/wasmhooks`, else `$HOME/.cache/wasmhooks`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("wasmhooks"))
}
