//! An engine following the bucket: each new set is fetched, kept, and
//! applied whole or not at all; the engine's report is kept current.

use super::local::Local;
use super::{
    BucketError, Buckets, CURRENT, EngineReport, Manifest, REPORT_EVERY, SetState, engine_key,
    object_name,
};
use crate::config::BucketConfig;
use crate::hooks::Registry;
use crate::util::hex;
use async_nats::jetstream::kv::Operation;
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt as _;

/// How long an engine with no set of its own yet waits, at start, for
/// the bucket's current set before it starts without hooks.
const FIRST_WAIT: Duration = Duration::from_secs(30);

/// The task following the bucket, stopped when dropped.
pub(crate) struct Follower {
    task: tokio::task::JoinHandle<()>,
    buckets: Arc<Mutex<Option<Buckets>>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Serves the last set this engine loaded whole, if any, then follows
    /// the bucket. Without a set of its own, waits for the bucket's
    /// current set (up to 30 s) so that the engine does not start
    /// ungated while its gates are one request away.
    pub(crate) async fn start(
        registry: Arc<Registry>,
        config: BucketConfig,
        state: &Path,
    ) -> Result<Follower, BucketError> {
        let local = {
            let state = state.to_owned();
            tokio::task::spawn_blocking(move || Local::open(&state))
                .await
                .expect("opening the local sets does not panic")?
        };
        let mut applied = 0;
        if let Some((version, dir)) = local.good() {
            match registry.apply_set(&dir, version).await {
                Ok(Ok(())) => {
                    applied = version;
                    tracing::info!(
                        set = version,
                        "serving set {version} of the hooks bucket, kept from the last run"
                    );
                }
                Ok(Err(_)) => {} // reported; the bucket's may do
                Err(e) => tracing::error!("{e}"),
            }
        }
        let buckets = Arc::new(Mutex::new(None));
        let (first, first_done) = tokio::sync::oneshot::channel();
        let follow = Follow {
            registry,
            config,
            local: Arc::new(local),
            seen: applied,
            buckets: buckets.clone(),
            first: Some(first),
        };
        let task = tokio::spawn(follow.run());
        if applied == 0 && tokio::time::timeout(FIRST_WAIT, first_done).await.is_err() {
            tracing::warn!(
                "no set from the hooks bucket within {FIRST_WAIT:?}, and none kept from an \
                 earlier run: starting without hooks; the set loads as soon as the bucket answers"
            );
        }
        Ok(Follower { task, buckets })
    }

    /// Every engine's report, from the bucket.
    pub(crate) async fn engines(&self) -> Result<Vec<EngineReport>, BucketError> {
        let buckets = self.buckets.lock().unwrap().clone();
        match buckets {
            Some(buckets) => buckets.engines().await,
            None => Err(BucketError::Connect(crate::queue::QueueError::Connect {
                url: String::new(),
                reason: "not connected to the hooks bucket yet".into(),
                source: None,
            })),
        }
    }
}

struct Follow {
    registry: Arc<Registry>,
    config: BucketConfig,
    local: Arc<Local>,
    /// The newest set applied or refused.
    seen: u64,
    buckets: Arc<Mutex<Option<Buckets>>>,
    /// Told once the bucket's current set was applied or refused, or the
    /// bucket has none.
    first: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Follow {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        let mut failing = false;
        loop {
            let error = self.follow().await;
            if !failing {
                tracing::warn!("{error}; trying again, the set serving goes on meanwhile");
                failing = true;
            } else {
                tracing::debug!("{error}");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Follows the bucket until it fails.
    async fn follow(&mut self) -> BucketError {
        let buckets = match Buckets::open(&self.config).await {
            Ok(buckets) => buckets,
            Err(e) => return e,
        };
        *self.buckets.lock().unwrap() = Some(buckets.clone());
        let url = buckets.url.clone();
        let mut sets = match buckets.sets.watch_with_history(CURRENT).await {
            Ok(watch) => watch,
            Err(e) => return BucketError::nats(&url, "watch the sets", e),
        };
        match buckets.sets.entry(CURRENT).await {
            Ok(None) => self.told_first(),
            Ok(Some(_)) => {}
            Err(e) => return BucketError::nats(&url, "read the current set", e),
        }
        self.report(&buckets).await;
        let mut reports = tokio::time::interval(REPORT_EVERY);
        loop {
            tokio::select! {
                entry = sets.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => return BucketError::nats(&url, "watch the sets", e),
                        None => return BucketError::nats(&url, "watch the sets", std::io::Error::other("the watch ended")),
                    };
                    if entry.operation != Operation::Put || entry.revision <= self.seen {
                        self.told_first();
                        continue;
                    }
                    if let Err(e) = self.apply(&buckets, entry.revision, &entry.value).await {
                        match e {
                            // The set itself is at fault: refused here.
                            BucketError::Malformed { .. } | BucketError::Digest { .. } => {
                                tracing::error!("{e}; the set serving goes on");
                                self.registry.refuse_set(entry.revision, e.to_string());
                                self.seen = entry.revision;
                            }
                            // NATS or the disk: tried again.
                            e => return e,
                        }
                    }
                    self.told_first();
                    self.report(&buckets).await;
                }
                _ = reports.tick() => self.report(&buckets).await,
            }
        }
    }

    fn told_first(&mut self) {
        if let Some(first) = self.first.take() {
            let _ = first.send(());
        }
    }

    /// Fetches the set's files this engine lacks, keeps them, and applies
    /// the set whole or refuses it.
    async fn apply(
        &mut self,
        buckets: &Buckets,
        version: u64,
        value: &[u8],
    ) -> Result<(), BucketError> {
        let manifest: Manifest =
            serde_json::from_slice(value).map_err(|e| BucketError::Malformed {
                version,
                reason: e.to_string(),
            })?;
        for (name, hook) in &manifest.hooks {
            let valid = !name.is_empty()
                && !name.starts_with('.')
                && !name.contains(['/', '\\', '\0'])
                && hook
                    .files()
                    .all(|(_, d)| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()));
            if !valid {
                return Err(BucketError::Malformed {
                    version,
                    reason: format!(
                        "hook {name:?}: not a hook's name, or a digest that is not SHA-256 hex"
                    ),
                });
            }
        }
        let started = std::time::Instant::now();
        let mut fetched = 0;
        let digests: HashSet<&str> = manifest
            .hooks
            .values()
            .flat_map(|h| h.files().map(|(_, d)| d))
            .collect();
        for digest in digests {
            if self.local.has(digest) {
                continue;
            }
            let name = object_name(digest);
            let mut object = buckets
                .files
                .get(&name)
                .await
                .map_err(|e| BucketError::nats(&buckets.url, format!("fetch {name}"), e))?;
            let mut bytes = Vec::new();
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| BucketError::nats(&buckets.url, format!("fetch {name}"), e))?;
            let got = hex(&Sha256::digest(&bytes));
            if got != digest {
                let file = manifest
                    .hooks
                    .iter()
                    .flat_map(|(n, h)| h.files().map(move |(ext, d)| (format!("{n}.{ext}"), d)))
                    .find(|(_, d)| *d == digest)
                    .map(|(f, _)| f)
                    .unwrap_or_default();
                return Err(BucketError::Digest {
                    version,
                    file,
                    expected: digest.to_owned(),
                    got,
                });
            }
            let (local, digest) = (self.local.clone(), digest.to_owned());
            tokio::task::spawn_blocking(move || local.keep(&digest, &bytes))
                .await
                .expect("keeping a file does not panic")?;
            fetched += 1;
        }
        let dir = {
            let (local, manifest) = (self.local.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || local.build(version, &manifest))
                .await
                .expect("building a set's folder does not panic")?
        };
        let applied = self
            .registry
            .apply_set(&dir, version)
            .await
            .map_err(|e| BucketError::local(&e.path, e.source))?;
        self.seen = version;
        match applied {
            Ok(()) => {
                let in_use: HashSet<_> = self
                    .registry
                    .snapshot()
                    .live
                    .values()
                    .filter_map(|h| h.file.parent().map(Path::to_owned))
                    .collect();
                let (local, hooks) = (self.local.clone(), manifest.hooks.len());
                tokio::task::spawn_blocking(move || local.loaded(version, &manifest, &in_use))
                    .await
                    .expect("recording a set does not panic")?;
                tracing::info!(
                    set = version,
                    hooks,
                    fetched,
                    ms = started.elapsed().as_millis() as u64,
                    "set {version} of the hooks bucket is live"
                );
            }
            Err(_) => self.local.drop_set(version), // reported by the registry
        }
        Ok(())
    }

    /// Writes this engine's report: its set and live hooks.
    async fn report(&self, buckets: &Buckets) {
        let snapshot = self.registry.snapshot();
        let engine = crate::delivery::history::engine_name();
        let report = EngineReport {
            engine: engine.clone(),
            set: snapshot.set.clone().unwrap_or(SetState {
                version: 0,
                refused: None,
            }),
            hooks: snapshot
                .live
                .iter()
                .map(|(name, h)| (name.clone(), h.hash.clone()))
                .collect(),
            updated_at_ms: crate::util::now_ms(),
            stale: false,
        };
        let json = serde_json::to_vec(&report).expect("a report serialises");
        if let Err(e) = buckets.engines.put(engine_key(&engine), json.into()).await {
            tracing::debug!("cannot write this engine's report to the hooks bucket: {e}");
        }
    }
}
