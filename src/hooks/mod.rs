//! The loaded hooks: load each `NAME.wasm` (+ `NAME.toml`, + `NAME.sig`
//! where `[trust]` asks for signatures), and serve an
//! immutable snapshot of them that swaps atomically (this file); reading,
//! compiling and linking one (`load.rs`); what `GET /v1/hooks` says of
//! each (`status.rs`); watching the folder (`watch.rs`); and why a hook did
//! not load (`error.rs`).

pub mod bucket;
mod error;
mod load;
mod status;
mod watch;

pub(crate) use error::HooksDirError;
pub use error::{LoadError, Stage, WatchError};
pub(crate) use load::{SettingsFrom, hook_files, hook_name, short};
pub use status::{Abi, HookState, HookStatus};
pub(crate) use watch::{Watch, WatchOptions};

use crate::alerts::{Alert, Alerts, Kind};
use crate::config::{HookConfig, Limits};
use crate::delivery::DeliveryPolicy;
use crate::event::{Event, Phase};
use crate::metrics::{HookStats, Metrics};
use crate::sandbox::{Prepared, Sandbox, Subscription};
use crate::trust::{PublicKey, signature_path};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use wildmatch::WildMatch;

/// Live hooks, shared between snapshots' indexes and events in flight.
pub(crate) type Hooks = Arc<[Arc<LiveHook>]>;

/// Most (method, phase) pairs whose matching hooks a snapshot remembers.
const INDEX_CAPACITY: usize = 4096;

/// A live hook: compiled, linked, set up, and taking events.
pub(crate) struct LiveHook {
    pub prepared: Prepared,
    pub file: PathBuf,
    pub hash: String,
    /// SHA-256 of the `.wasm` alone: the compiled component's key.
    pub wasm_hash: String,
    /// SHA-256 of the pre-initialised component, if there is one: its
    /// compiled key.
    pub initialized_hash: Option<String>,
    pub config: HookConfig,
    /// The id of the key whose signature of the module was checked at
    /// load (`[trust]`); `None` on an engine that runs unsigned hooks.
    pub signed_by: Option<String>,
    /// Egress and signing, from `NAME.toml`.
    pub policy: Arc<DeliveryPolicy>,
    pub subscription: Subscription,
    methods: Vec<WildMatch>,
    pub loaded_at: SystemTime,
    pub stats: Arc<HookStats>,
}

impl LiveHook {
    pub(crate) fn name(&self) -> &str {
        &self.prepared.name
    }

    /// Whether this hook subscribed to the event's method and phase.
    pub(crate) fn wants(&self, event: &Event) -> bool {
        self.subscription.phases.contains(&event.phase())
            && self.methods.iter().any(|m| m.matches(event.method()))
    }
}

/// One immutable view of the hooks. Readers hold it for a whole event, so a
/// swap never changes the hooks under an event in flight.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// Live hooks, by name.
    pub live: BTreeMap<String, Arc<LiveHook>>,
    /// The last load error per hook name, if its latest file failed.
    pub failed: BTreeMap<String, LoadError>,
    /// Which set of a hooks bucket these hooks are, and the last set
    /// refused; `None` for hooks from a folder.
    pub set: Option<SetState>,
    /// Which live hooks want a (method, phase), filled as events arrive, so
    /// the per-event cost does not grow with the number of hooks loaded.
    index: RwLock<HashMap<(String, Phase), Hooks>>,
}

impl Snapshot {
    fn new(
        live: BTreeMap<String, Arc<LiveHook>>,
        failed: BTreeMap<String, LoadError>,
        set: Option<SetState>,
    ) -> Snapshot {
        Snapshot {
            live,
            failed,
            set,
            index: RwLock::default(),
        }
    }

    /// The live hooks subscribed to this event, in name order.
    pub(crate) fn matching(&self, event: &Event) -> Hooks {
        let key = (event.method().to_owned(), event.phase());
        if let Some(hooks) = self.index.read().unwrap().get(&key) {
            return hooks.clone();
        }
        let hooks: Hooks = self
            .live
            .values()
            .filter(|h| h.wants(event))
            .cloned()
            .collect();
        let mut index = self.index.write().unwrap();
        if index.len() >= INDEX_CAPACITY {
            index.clear(); // bounded: methods come from callers
        }
        index.insert(key, hooks.clone());
        hooks
    }
}

/// The set of a hooks bucket an engine serves, and the last it refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SetState {
    /// The set serving: its version in the bucket (0: none yet).
    pub version: u64,
    /// The newest set that failed to load here, if it is newer than the
    /// one serving: its version, and why (each hook that failed is in
    /// `GET /v1/hooks`, `last_error`).
    pub refused: Option<SetRefusal>,
}

/// A set of hooks that did not load on this engine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SetRefusal {
    /// Its version.
    pub version: u64,
    /// Why, one line per hook that failed.
    pub reasons: Vec<String>,
}

/// What a hook's `.wasm`, `.toml` and `.sig` looked like.
type HookStamps = [Option<FileStamp>; 3];

/// What a hook's files looked like when last examined, to skip unchanged files on a rescan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// The hooks folder's loaded state.
pub(crate) struct Registry {
    sandbox: Arc<Sandbox>,
    limits: Limits,
    /// The keys a hook's signature must be made by (`[trust]`); `None`:
    /// unsigned hooks load.
    trust: Option<Arc<[PublicKey]>>,
    snapshot: ArcSwap<Snapshot>,
    stats: Mutex<BTreeMap<String, Arc<HookStats>>>,
    metrics: Arc<Metrics>,
    /// Where a hook failing to load, or recovering, is raised.
    alerts: Arc<Alerts>,
    /// Serialises writers; holds the file stamps seen at the last look.
    writer: tokio::sync::Mutex<HashMap<String, HookStamps>>,
    /// Bumped after every swap, so callers can wait for a change.
    generation: tokio::sync::watch::Sender<u64>,
}

/// Which hooks [`Registry::reconcile`] reads again whatever their files'
/// size and mtime say.
#[derive(Clone, Copy)]
pub(crate) enum Force<'a> {
    /// These (their writer closed them, or they were renamed).
    These(&'a HashSet<String>),
    /// Every hook in the folder: an operator's reload. A missing folder is
    /// then an error.
    Every,
}

impl Force<'_> {
    fn covers(&self, name: &str) -> bool {
        match self {
            Force::These(names) => names.contains(name),
            Force::Every => true,
        }
    }
}

impl Registry {
    pub(crate) fn new(
        sandbox: Arc<Sandbox>,
        limits: Limits,
        trust: Option<Arc<[PublicKey]>>,
        metrics: Arc<Metrics>,
        alerts: Arc<Alerts>,
    ) -> Registry {
        Registry {
            sandbox,
            limits,
            trust,
            metrics,
            alerts,
            snapshot: ArcSwap::default(),
            stats: Mutex::default(),
            writer: tokio::sync::Mutex::default(),
            generation: tokio::sync::watch::channel(0).0,
        }
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A receiver that sees the generation number change after each swap.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reads every file in the folder again now, whatever its size and
    /// mtime say, and reconciles: a hook whose content changed is
    /// reloaded, one whose content did not is left as it is. A folder that
    /// is missing is an error here, not an empty folder: an operator's
    /// reload never unloads every gate by accident.
    pub(crate) async fn reload(&self, dir: &Path) -> Result<(), HooksDirError> {
        self.reconcile(dir, Force::Every, &HashSet::new(), Duration::ZERO)
            .await
    }

    /// Brings the snapshot in line with the folder, in one atomic swap:
    /// new and changed hooks are loaded off to the side (a version that
    /// fails leaves the last good one serving), removed ones are unloaded.
    ///
    /// Files are re-read when `force` covers their hook (its writer closed
    /// it, it was renamed, or a reload asks for every file), or when their
    /// size, mtime or inode changed and they have been quiet for `quiet`
    /// (so a rescan does not catch a writer mid-file). Hooks in `unsettled`
    /// (still being written) are left as they are. A missing folder counts
    /// as empty, except for [`Force::Every`].
    pub(crate) async fn reconcile(
        &self,
        dir: &Path,
        force: Force<'_>,
        unsettled: &HashSet<String>,
        quiet: Duration,
    ) -> Result<(), HooksDirError> {
        self.reconcile_as(dir, force, unsettled, quiet, None)
            .await
            .map(drop)
    }

    /// Makes the hooks of `dir`, set `version` of a hooks bucket, the live
    /// hooks, all of them or none: if one fails to load, every hook of the
    /// set serving goes on serving, and the set is refused (its failures
    /// reported per hook). Hooks not in the set are unloaded.
    pub(crate) async fn apply_set(
        &self,
        dir: &Path,
        version: u64,
    ) -> Result<Result<(), SetRefusal>, HooksDirError> {
        self.reconcile_as(
            dir,
            Force::Every,
            &HashSet::new(),
            Duration::ZERO,
            Some(version),
        )
        .await
    }

    async fn reconcile_as(
        &self,
        dir: &Path,
        force: Force<'_>,
        unsettled: &HashSet<String>,
        quiet: Duration,
        set: Option<u64>,
    ) -> Result<Result<(), SetRefusal>, HooksDirError> {
        let mut seen = self.writer.lock().await;
        let started = Instant::now();
        let files = match hook_files(dir) {
            Ok(files) => files,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && !matches!(force, Force::Every) =>
            {
                Vec::new()
            }
            Err(source) => {
                return Err(HooksDirError {
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        let current = self.snapshot();
        let present: HashSet<String> = files.iter().map(|f| hook_name(f)).collect();
        let candidates: Vec<(String, PathBuf, _)> = files
            .into_iter()
            .map(|wasm| {
                let stamps = [
                    file_stamp(&wasm),
                    file_stamp(&wasm.with_extension("toml")),
                    file_stamp(&signature_path(&wasm)),
                ];
                (hook_name(&wasm), wasm, stamps)
            })
            .filter(|(name, ..)| !unsettled.contains(name))
            .filter(|(name, _, stamps)| {
                let quiet_since = SystemTime::now() - quiet;
                let settled = stamps
                    .iter()
                    .all(|s| s.is_none_or(|s| s.modified.is_none_or(|m| m <= quiet_since)));
                force.covers(name) || (settled && seen.get(name) != Some(stamps))
            })
            .collect();
        let loads = candidates.iter().map(|(name, wasm, _)| {
            let live = current
                .live
                .get(name)
                .map(|h| (h.hash.clone(), h.signed_by.clone()));
            async move {
                let files = self.read(wasm, SettingsFrom::Beside).await?;
                if live.as_ref() == Some(&(files.hash.clone(), files.signed_by.clone())) {
                    return Ok(None); // touched, not changed (nor signed by another key)
                }
                self.build(files).await.map(Some)
            }
        });
        let results: Vec<Result<Option<LiveHook>, LoadError>> =
            futures::future::join_all(loads).await;

        let mut live = current.live.clone();
        let mut failed = current.failed.clone();
        let mut changed = false;
        if let Some(version) = set
            && results.iter().any(Result::is_err)
        {
            // All or nothing: the set serving stays, whole.
            let mut reasons = Vec::new();
            for ((name, ..), result) in candidates.iter().zip(results) {
                match result {
                    Err(err) => {
                        reasons.push(err.to_string());
                        self.failed_to_load(name, &err, live.get(name).map(|h| &*h.hash));
                        failed.insert(name.clone(), err);
                    }
                    // Loads in this set: an older set's error is stale.
                    Ok(_) => {
                        failed.remove(name);
                    }
                }
            }
            let refusal = SetRefusal { version, reasons };
            tracing::error!(
                set = version,
                "set {version} of the hooks bucket refused: {}; the set serving goes on",
                refusal.reasons.join("; ")
            );
            self.store_refusal(&current, live, failed, refusal.clone());
            return Ok(Err(refusal));
        }
        let quiet_since = SystemTime::now() - quiet;
        for ((name, _, stamps), result) in candidates.into_iter().zip(results) {
            // Fresh: written within `quiet`, not stamped in the future (a
            // skewed clock must not hide a refusal), and only from the
            // watcher (an operator's reload reports at once).
            let now = SystemTime::now();
            if let Err(err) = &result
                && err.stage == Stage::Signature
                && !quiet.is_zero()
                && stamps
                    .iter()
                    .flatten()
                    .any(|s| s.modified.is_some_and(|m| m > quiet_since && m <= now))
            {
                // A deploy writes a module and its signature one after the
                // other: a mismatch between them while either is fresh is
                // not reported yet. The next file event, or the rescan once
                // they are quiet, reads them again.
                tracing::debug!(hook = %name, "{err}; read again once its files settle");
                continue;
            }
            seen.insert(name.clone(), stamps);
            let old = live.get(&name).map(|h| h.hash.clone());
            match result {
                Ok(None) => {
                    if failed.remove(&name).is_some() {
                        self.recovered(&name, current.live.get(&name).map(|h| &*h.hash));
                        changed = true;
                    }
                }
                Ok(Some(hook)) => {
                    hook.stats.loads.inc();
                    match &old {
                        None => {
                            tracing::info!(hook = %name, hash = %short(&hook.hash), subscription = ?hook.subscription, "hook loaded")
                        }
                        Some(old) => tracing::info!(
                            hook = %name, old = %short(old), new = %short(&hook.hash), swap_ms = started.elapsed().as_secs_f64() * 1e3,
                            "hook reloaded"
                        ),
                    }
                    if failed.remove(&name).is_some() {
                        self.recovered(&name, Some(&hook.hash));
                    }
                    live.insert(name, Arc::new(hook));
                    changed = true;
                }
                Err(err) => {
                    self.failed_to_load(&name, &err, old.as_deref());
                    failed.insert(name, err);
                    changed = true;
                }
            }
        }
        let gone: Vec<String> = live
            .keys()
            .chain(failed.keys())
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(hook) = live.remove(&name) {
                tracing::info!(hook = %name, hash = %short(&hook.hash), "hook unloaded: its file was removed");
            }
            if failed.remove(&name).is_some() {
                self.recovered(&name, None); // its failing file is gone
            }
            seen.remove(&name);
            changed = true;
        }
        if changed {
            // Old versions leave memory once the last event using them ends;
            // their compiled code stays only on disk.
            self.sandbox.retain_compiled(
                live.values()
                    .flat_map(|h| std::iter::once(&h.wasm_hash).chain(&h.initialized_hash))
                    .map(String::as_str),
            );
        }
        // A set of the same hooks as the one serving changes its version only.
        let set = match set {
            Some(version) => Some(SetState {
                version,
                refused: None,
            }),
            None => current.set.clone(),
        };
        if changed || set != current.set {
            self.snapshot
                .store(Arc::new(Snapshot::new(live, failed, set)));
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(Ok(()))
    }

    /// Stores that a set of the hooks bucket was refused: the set serving,
    /// its hooks `live`, go on; `failed` says which hooks failed.
    fn store_refusal(
        &self,
        current: &Snapshot,
        live: BTreeMap<String, Arc<LiveHook>>,
        failed: BTreeMap<String, LoadError>,
        refusal: SetRefusal,
    ) {
        let state = SetState {
            version: current.set.as_ref().map_or(0, |s| s.version),
            refused: Some(refusal),
        };
        self.snapshot
            .store(Arc::new(Snapshot::new(live, failed, Some(state))));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Records that set `version` of the hooks bucket was refused before
    /// any of its hooks was tried (the set itself is at fault).
    pub(crate) async fn refuse_set(&self, version: u64, reason: String) {
        let _writer = self.writer.lock().await;
        let current = self.snapshot();
        let refusal = SetRefusal {
            version,
            reasons: vec![reason],
        };
        self.store_refusal(
            &current,
            current.live.clone(),
            current.failed.clone(),
            refusal,
        );
    }

    /// Reports a hook whose new version did not load; `serving`: the hash
    /// of the version that goes on serving, if any.
    fn failed_to_load(&self, name: &str, err: &LoadError, serving: Option<&str>) {
        self.stats_for(name).load_failures.inc();
        match serving {
            Some(old) => tracing::error!("{err}; version {} keeps serving", short(old)),
            None => tracing::error!("{err}"),
        }
        self.alerts.raise(
            Alert::new(Kind::HookLoadFailed, name)
                .with("file", err.file.display().to_string())
                .with("stage", err.stage.to_string())
                .with("error", err.reason.as_str())
                .with("serving", serving.map(short)),
        );
    }

    /// Raises that a hook which had failed to load no longer fails: it
    /// serves as `version`, or (`None`) its file was removed.
    fn recovered(&self, name: &str, version: Option<&str>) {
        self.alerts
            .raise(Alert::new(Kind::HookRecovered, name).with("version", version.map(short)));
    }

    fn stats_for(&self, name: &str) -> Arc<HookStats> {
        self.stats
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(self.metrics.hook(name)))
            .clone()
    }
}

impl crate::delivery::PolicySource for Registry {
    fn policy(&self, hook: &str) -> Option<Arc<DeliveryPolicy>> {
        self.snapshot().live.get(hook).map(|h| h.policy.clone())
    }
}
