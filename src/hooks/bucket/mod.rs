//! Hooks from a shared bucket on NATS JetStream: `wasmhooks hooks push`
//! publishes a folder as one versioned set (`push.rs`); each engine keeps
//! the sets it loads in its state folder (`local.rs`), follows the bucket
//! and applies each new set whole or not at all (`follow.rs`); and every
//! engine says which set it serves, where any engine can read it
//! (`GET /v1/engines`).
//!
//! Three JetStream buckets, named from [`BucketConfig::prefix`] (`P`):
//! - `P_HOOK_FILES`, an object store: each file of a set (`NAME.wasm`,
//!   `NAME.toml`, `NAME.sig`) once, under its SHA-256 (`sha256-HEX`), so a
//!   set that changes one hook uploads one file;
//! - `P_HOOK_SETS`, a key-value bucket: `current` holds the set, a JSON
//!   [`Manifest`] of each hook's files by digest; its revision is the
//!   set's version, so versions only grow, and the last 64 are kept;
//! - `P_ENGINES`, a key-value bucket: one [`EngineReport`] per engine,
//!   written at each change and every 10 s.

mod error;
mod follow;
mod local;
mod push;

pub use error::BucketError;
pub(crate) use follow::Follower;
pub use push::{Pushed, push};

use crate::config::BucketConfig;
use async_nats::jetstream::{self, kv, object_store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub use super::{SetRefusal, SetState};

/// The key of the current set in `P_HOOK_SETS`.
const CURRENT: &str = "current";
/// How often an engine rewrites its report.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A report older than this is from an engine that stopped, or lost NATS.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// One set: each hook's files, by SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    /// The hooks, by name.
    pub hooks: BTreeMap<String, SetHook>,
    /// When it was pushed (Unix ms).
    pub pushed_at_ms: u64,
    /// Who pushed it: `host/pid`.
    pub pushed_by: String,
}

/// One hook of a set: the digests of its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetHook {
    pub wasm: String,
    pub toml: Option<String>,
    pub sig: Option<String>,
}

impl SetHook {
    /// Its files: (extension, digest).
    pub(crate) fn files(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("wasm", Some(&self.wasm)),
            ("toml", self.toml.as_ref()),
            ("sig", self.sig.as_ref()),
        ]
        .into_iter()
        .filter_map(|(ext, digest)| Some((ext, digest?.as_str())))
    }
}

/// What one engine says of itself in `P_ENGINES`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct EngineReport {
    /// The engine: `host/pid`.
    pub engine: String,
    /// The set it serves, and the last it refused.
    pub set: SetState,
    /// Its live hooks: name and version (SHA-256 of `.wasm` and `.toml`).
    pub hooks: BTreeMap<String, String>,
    /// When it wrote this (Unix ms).
    pub updated_at_ms: u64,
    /// Whether it has not written for 30 s: stopped, or cut off from NATS.
    #[serde(default)]
    pub stale: bool,
}

/// The three buckets, opened (created if missing).
#[derive(Clone)]
pub(crate) struct Buckets {
    pub url: String,
    pub files: object_store::ObjectStore,
    pub sets: kv::Store,
    pub engines: kv::Store,
}

impl Buckets {
    /// Connects once (no attempt goes on after an error: callers that try
    /// again call this again).
    pub(crate) async fn open(config: &BucketConfig) -> Result<Buckets, BucketError> {
        let client = crate::queue::connect_nats(&config.url, config.credentials.as_deref(), false)
            .await
            .map_err(BucketError::Connect)?;
        let js = jetstream::new(client);
        let (p, url) = (&config.prefix, config.url.as_str());
        let files = match js.get_object_store(format!("{p}_HOOK_FILES")).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: format!("{p}_HOOK_FILES"),
                    description: Some("wasmhooks: the files of the hook sets, by SHA-256".into()),
                    num_replicas: config.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| BucketError::nats(url, format!("create {p}_HOOK_FILES"), e))?,
        };
        let kv = |name: String, history: i64, max_age: Duration| {
            let js = js.clone();
            async move {
                match js.get_key_value(&name).await {
                    Ok(store) => Ok(store),
                    Err(_) => js
                        .create_key_value(kv::Config {
                            bucket: name.clone(),
                            history,
                            max_age,
                            num_replicas: config.replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| BucketError::nats(url, format!("create {name}"), e)),
                }
            }
        };
        let sets = kv(format!("{p}_HOOK_SETS"), 64, Duration::ZERO).await?;
        let engines = kv(format!("{p}_ENGINES"), 1, Duration::from_secs(86_400)).await?;
        Ok(Buckets {
            url: config.url.clone(),
            files,
            sets,
            engines,
        })
    }

    /// Every engine's report, stale ones marked.
    pub(crate) async fn engines(&self) -> Result<Vec<EngineReport>, BucketError> {
        use futures::TryStreamExt as _;
        let url = &self.url;
        let keys: Vec<String> = self
            .engines
            .keys()
            .await
            .map_err(|e| BucketError::nats(url, "list the engines", e))?
            .try_collect()
            .await
            .map_err(|e| BucketError::nats(url, "list the engines", e))?;
        let now = crate::util::now_ms();
        let mut reports = Vec::new();
        for key in keys {
            let Some(value) = self
                .engines
                .get(&key)
                .await
                .map_err(|e| BucketError::nats(url, "read an engine's report", e))?
            else {
                continue;
            };
            if let Ok(mut report) = serde_json::from_slice::<EngineReport>(&value) {
                report.stale =
                    now.saturating_sub(report.updated_at_ms) > STALE_AFTER.as_millis() as u64;
                reports.push(report);
            }
        }
        reports.sort_by(|a, b| a.engine.cmp(&b.engine));
        Ok(reports)
    }
}

/// Every engine's report on the bucket, stale ones marked: which set it
/// serves, the last it refused, and its live hooks.
pub async fn engines(config: &BucketConfig) -> Result<Vec<EngineReport>, BucketError> {
    Buckets::open(config).await?.engines().await
}

/// The version of the bucket's current set; 0 if none was pushed.
pub async fn current_version(config: &BucketConfig) -> Result<u64, BucketError> {
    let buckets = Buckets::open(config).await?;
    let entry = buckets
        .sets
        .entry(CURRENT)
        .await
        .map_err(|e| BucketError::nats(&buckets.url, "read the current set", e))?;
    Ok(entry.map_or(0, |e| e.revision))
}

/// A file's name in `P_HOOK_FILES`.
fn object_name(digest: &str) -> String {
    format!("sha256-{digest}")
}

/// An engine's key in `P_ENGINES`: its name, with what a key cannot hold
/// replaced.
fn engine_key(engine: &str) -> String {
    engine
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
