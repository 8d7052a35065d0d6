//! An engine following the bucket: each new set is fetched, kept, and
//! applied whole or not at all; the engine's report is kept current.

use super::local::Local;
use super::{
    BucketError, Buckets, CURRENT, EngineReport, Manifest, REPORT_EVERY, engine_key, object_name,
};
use crate::config::BucketConfig;
use crate::files::{MAX_SIGNATURE_BYTES, MAX_TOML_BYTES, MAX_WASM_BYTES};
use crate::hooks::Registry;
use crate::util::hex;
use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::object_store;
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
    /// The bucket's servers, for errors.
    url: String,
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
        let url = config.url.clone();
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
        Ok(Follower { url, task, buckets })
    }

    /// Every engine's report, from the bucket.
    pub(crate) async fn engines(&self) -> Result<Vec<EngineReport>, BucketError> {
        let buckets = self.buckets.lock().unwrap().clone();
        match buckets {
            Some(buckets) => buckets.engines().await,
            None => Err(BucketError::NotConnected {
                url: self.url.clone(),
            }),
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

/// The first wait between two tries, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Follow {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        // One connection, kept: it reconnects by itself.
        let buckets = loop {
            match Buckets::open(&self.config).await {
                Ok(buckets) => break buckets,
                Err(e) => self.wait(e, &mut failing, &mut backoff).await,
            }
        };
        *self.buckets.lock().unwrap() = Some(buckets.clone());
        loop {
            let error = self.follow(&buckets, &mut failing, &mut backoff).await;
            self.wait(error, &mut failing, &mut backoff).await;
        }
    }

    /// Says why the bucket cannot be followed (once per episode), and
    /// waits before the next try.
    async fn wait(&self, error: BucketError, failing: &mut bool, backoff: &mut Duration) {
        if *failing {
            tracing::debug!("{error}");
        } else {
            tracing::warn!("{error}; trying again, the set serving goes on meanwhile");
            *failing = true;
        }
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }

    /// Follows the bucket until it fails.
    async fn follow(
        &mut self,
        buckets: &Buckets,
        failing: &mut bool,
        backoff: &mut Duration,
    ) -> BucketError {
        let url = buckets.url.clone();
        let mut sets = match buckets.sets.watch_with_history(CURRENT).await {
            Ok(watch) => watch,
            Err(e) => return BucketError::nats(&url, "watch the sets", e),
        };
        let current = match buckets.sets.entry(CURRENT).await {
            Ok(current) => current,
            Err(e) => return BucketError::nats(&url, "read the current set", e),
        };
        if *failing {
            tracing::info!("the hooks bucket answers again");
            *failing = false;
        }
        *backoff = MIN_BACKOFF;
        self.report(buckets).await;
        if current.is_none() {
            self.told_first();
        }
        let mut reports = tokio::time::interval(REPORT_EVERY);
        loop {
            tokio::select! {
                entry = sets.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => return BucketError::nats(&url, "watch the sets", e),
                        None => return BucketError::nats(&url, "watch the sets", std::io::Error::other("the watch ended")),
                    };
                    if entry.operation != Operation::Put || entry.revision == self.seen {
                        self.told_first();
                        continue;
                    }
                    if entry.revision < self.seen {
                        // Versions only grow: the bucket was made anew.
                        tracing::warn!(
                            "the hooks bucket's current set is {}, older than set {} this engine \
                             has seen: the bucket was reset; taking its set",
                            entry.revision,
                            self.seen
                        );
                    }
                    if let Err(e) = self.apply(buckets, entry.revision, &entry.value).await {
                        if e.is_the_sets_fault() {
                            tracing::error!("{e}; the set serving goes on");
                            self.registry.refuse_set(entry.revision, e.to_string()).await;
                            self.seen = entry.revision;
                        } else {
                            return e; // NATS or the disk: tried again
                        }
                    }
                    self.report(buckets).await;
                    self.told_first();
                }
                _ = reports.tick() => self.report(buckets).await,
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
        if manifest.hooks.is_empty() {
            return Err(BucketError::Malformed {
                version,
                reason: "no hook in it (it would unload every hook)".into(),
            });
        }
        for (name, hook) in &manifest.hooks {
            let valid_name = (1..=200).contains(&name.len())
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            let valid_digests = hook.files().all(|(_, d)| {
                d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            });
            if !valid_name || !valid_digests {
                return Err(BucketError::Malformed {
                    version,
                    reason: format!(
                        "hook {name:?}: a name must be 1 to 200 letters, digits, `-`, `_` or \
                         `.`, and each digest 64 lowercase hex digits"
                    ),
                });
            }
        }
        let started = std::time::Instant::now();
        let mut fetched = 0;
        // Each file once: its name in the set, and the most it may weigh.
        let mut wanted: std::collections::BTreeMap<&str, (String, u64)> = Default::default();
        for (name, hook) in &manifest.hooks {
            for (ext, digest) in hook.files() {
                let max = match ext {
                    "wasm" => MAX_WASM_BYTES,
                    "toml" => MAX_TOML_BYTES,
                    _ => MAX_SIGNATURE_BYTES,
                };
                wanted.insert(digest, (format!("{name}.{ext}"), max));
            }
        }
        for (digest, (file, max)) in wanted {
            let (local, owned) = (self.local.clone(), digest.to_owned());
            // Checked again, not only found: a file cut short by a crash
            // is fetched anew.
            if tokio::task::spawn_blocking(move || local.valid(&owned))
                .await
                .expect("checking a file does not panic")
            {
                continue;
            }
            let name = object_name(digest);
            let mut object = match buckets.files.get(&name).await {
                Ok(object) => object,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                    return Err(BucketError::Missing { version, file });
                }
                Err(e) => {
                    return Err(BucketError::nats(&buckets.url, format!("fetch {name}"), e));
                }
            };
            if object.info.size as u64 > max {
                return Err(BucketError::TooBig {
                    version,
                    file,
                    size: object.info.size as u64,
                    max,
                });
            }
            let mut bytes = Vec::new();
            (&mut object)
                .take(max + 1)
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| BucketError::nats(&buckets.url, format!("fetch {name}"), e))?;
            if bytes.len() as u64 > max {
                return Err(BucketError::TooBig {
                    version,
                    file,
                    size: bytes.len() as u64,
                    max,
                });
            }
            let (local, owned) = (self.local.clone(), digest.to_owned());
            tokio::task::spawn_blocking(move || {
                let got = hex(&Sha256::digest(&bytes));
                if got != owned {
                    return Err(BucketError::Digest {
                        version,
                        file,
                        expected: owned,
                        got,
                    });
                }
                local.keep(&owned, &bytes)
            })
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
            set: snapshot.set.clone().unwrap_or_default(),
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
