//! The loaded hooks: load each `NAME.wasm` (+ `NAME.toml`), and serve an
//! immutable snapshot of them that swaps atomically.

use crate::config::{HookConfig, HookLimits, HookMode, Limits, OnError};
use crate::delivery::DeliveryPolicy;
use crate::error::{Error, LoadError, Stage};
use crate::event::{Event, Phase};
use crate::files::{MAX_TOML_BYTES, MAX_WASM_BYTES, read_regular};
use crate::metrics::{HookStats, Metrics};
use crate::sandbox::{Failure, Pre, Prepared, Sandbox, SetUp, Subscription};
use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
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
    /// Egress and signing, from `NAME.toml`.
    pub policy: Arc<DeliveryPolicy>,
    pub subscription: Subscription,
    methods: Vec<WildMatch>,
    pub loaded_at: SystemTime,
    pub stats: Arc<HookStats>,
}

impl LiveHook {
    pub fn name(&self) -> &str {
        &self.prepared.name
    }

    /// Whether this hook subscribed to the event's method and phase.
    pub fn wants(&self, event: &Event) -> bool {
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
    /// Which live hooks want a (method, phase), filled as events arrive, so
    /// the per-event cost does not grow with the number of hooks loaded.
    index: RwLock<HashMap<(String, Phase), Hooks>>,
}

impl Snapshot {
    fn new(live: BTreeMap<String, Arc<LiveHook>>, failed: BTreeMap<String, LoadError>) -> Snapshot {
        Snapshot {
            live,
            failed,
            index: RwLock::default(),
        }
    }

    /// The live hooks subscribed to this event, in name order.
    pub fn matching(&self, event: &Event) -> Hooks {
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

/// Whether a hook is taking events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HookState {
    /// Loaded and taking events (possibly an older version, see `last_error`).
    Live,
    /// Never loaded successfully; not taking events.
    Failed,
}

/// How a hook talks to the engine (see docs/writing-hooks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Abi {
    /// A component of the `hook` world.
    Component,
    /// A WASI command: event on stdin, outcome on stdout.
    Command,
}

/// What the status API and `check` show for one hook.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HookStatus {
    /// The hook's name: its file name without `.wasm`.
    pub name: String,
    /// Live or failed.
    pub state: HookState,
    /// The `.wasm` file.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// SHA-256 of the live version's `.wasm` and `.toml`, hex.
    pub hash: Option<String>,
    /// When the live version was loaded, RFC 3339.
    pub loaded_at: Option<String>,
    /// The live version's ABI.
    pub abi: Option<Abi>,
    /// Whether the live version's fresh instances start from the state its
    /// `setup` left at load (`preinitialize = true`, and it could be
    /// snapshotted), rather than running `setup` before every event.
    pub preinitialized: Option<bool>,
    /// Warm instances idle now, for a live version with `[reuse]`.
    pub warm: Option<usize>,
    /// What the live version subscribed to.
    pub subscription: Option<Subscription>,
    /// What a pre verdict does when this hook fails.
    pub on_error: Option<OnError>,
    /// Whether its vetoes stop the operation (`enforce`) or are only
    /// reported (`monitor`).
    pub mode: Option<HookMode>,
    /// Whether pre events wait for this hook's deliveries.
    pub wait: Option<bool>,
    /// For a live hook subscribed to pre events (a gate): which entry points
    /// into the orchestrator wait for its verdict, and which do not, as the
    /// orchestrator's plugins report them (see [`crate::coverage`]).
    pub coverage: Option<crate::coverage::GateCoverage>,
    /// Why the latest file failed to load, if it did.
    pub last_error: Option<LoadError>,
    /// Events handled.
    pub calls: u64,
    /// Events on which the hook failed (timeouts included).
    pub errors: u64,
    /// Events on which the hook hit its deadline.
    pub timeouts: u64,
    /// Pre events it vetoed (enforced).
    pub denials: u64,
    /// Pre events it would have vetoed, in monitor mode.
    pub would_deny: u64,
    /// Versions of this hook loaded successfully since the engine started.
    pub loads: u64,
    /// Attempts to load a new version that failed since the engine started.
    pub load_failures: u64,
}

/// The signatures of a hook's `.wasm` and `.toml`.
type HookSigs = (Option<FileSig>, Option<FileSig>);

/// What a hook's files looked like when last examined, to skip unchanged files on a rescan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn file_sig(path: &Path) -> Option<FileSig> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileSig {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// The hooks folder's loaded state.
pub(crate) struct Registry {
    sandbox: Arc<Sandbox>,
    limits: Limits,
    snapshot: ArcSwap<Snapshot>,
    stats: Mutex<BTreeMap<String, Arc<HookStats>>>,
    metrics: Arc<Metrics>,
    /// Serialises writers; holds the file signatures seen at the last look.
    writer: tokio::sync::Mutex<HashMap<String, HookSigs>>,
    /// Bumped after every swap, so callers can wait for a change.
    generation: watch::Sender<u64>,
}

impl Registry {
    pub fn new(sandbox: Arc<Sandbox>, limits: Limits, metrics: Arc<Metrics>) -> Registry {
        Registry {
            sandbox,
            limits,
            metrics,
            snapshot: ArcSwap::default(),
            stats: Mutex::default(),
            writer: tokio::sync::Mutex::default(),
            generation: watch::channel(0).0,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A receiver that sees the generation number change after each swap.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Brings the snapshot in line with the folder, in one atomic swap:
    /// new and changed hooks are loaded off to the side (a version that
    /// fails leaves the last good one serving), removed ones are unloaded.
    ///
    /// Files are re-read when their hook is in `force` (its writer closed
    /// it, or it was renamed), or when their size, mtime or inode changed
    /// and they have been quiet for `quiet` (so a rescan does not catch a
    /// writer mid-file). Hooks in `unsettled` (still being written) are left
    /// as they are. A missing folder counts as empty.
    pub async fn reconcile(
        &self,
        dir: &Path,
        force: &HashSet<String>,
        unsettled: &HashSet<String>,
        quiet: Duration,
    ) -> Result<(), Error> {
        let mut seen = self.writer.lock().await;
        let started = Instant::now();
        let files = match hook_files(dir) {
            Ok(files) => files,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(Error::HooksDir {
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
                (
                    hook_name(&wasm),
                    file_sig(&wasm),
                    file_sig(&wasm.with_extension("toml")),
                    wasm,
                )
            })
            .filter(|(name, ..)| !unsettled.contains(name))
            .filter(|(name, wasm_sig, toml_sig, _)| {
                let quiet_since = SystemTime::now() - quiet;
                let settled = [wasm_sig, toml_sig]
                    .iter()
                    .all(|s| s.is_none_or(|s| s.modified.is_none_or(|m| m <= quiet_since)));
                force.contains(name) || (settled && seen.get(name) != Some(&(*wasm_sig, *toml_sig)))
            })
            .map(|(name, wasm_sig, toml_sig, wasm)| (name, wasm, (wasm_sig, toml_sig)))
            .collect();
        let loads = candidates.iter().map(|(name, wasm, _)| {
            let live_hash = current.live.get(name).map(|h| h.hash.clone());
            async move {
                let files = self.read(wasm, None).await?;
                if live_hash.as_deref() == Some(files.hash.as_str()) {
                    return Ok(None); // touched, not changed
                }
                self.build(files).await.map(Some)
            }
        });
        let results: Vec<Result<Option<LiveHook>, LoadError>> =
            futures::future::join_all(loads).await;

        let mut live = current.live.clone();
        let mut failed = current.failed.clone();
        let mut changed = false;
        for ((name, _, sigs), result) in candidates.into_iter().zip(results) {
            seen.insert(name.clone(), sigs);
            let old = live.get(&name).map(|h| h.hash.clone());
            match result {
                Ok(None) => changed |= failed.remove(&name).is_some(),
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
                    failed.remove(&name);
                    live.insert(name, Arc::new(hook));
                    changed = true;
                }
                Err(err) => {
                    self.stats_for(&name).load_failures.inc();
                    match &old {
                        Some(old) => tracing::error!("{err}; version {} keeps serving", short(old)),
                        None => tracing::error!("{err}"),
                    }
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
            failed.remove(&name);
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
            self.snapshot.store(Arc::new(Snapshot::new(live, failed)));
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    fn stats_for(&self, name: &str) -> Arc<HookStats> {
        self.stats
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(self.metrics.hook(name)))
            .clone()
    }

    /// Loads one hook off to the side: read, compile, link, `setup`. Its
    /// config comes from `NAME.toml` beside it unless `config` is given.
    pub async fn load(
        &self,
        wasm: &Path,
        config: Option<HookConfig>,
    ) -> Result<LiveHook, LoadError> {
        self.build(self.read(wasm, config).await?).await
    }

    /// Reads a hook's files and hashes them, on a blocking thread: the
    /// folder's files are the operator's, and reading one (or a `file:`
    /// secret) must never stall the async runtime.
    async fn read(&self, wasm: &Path, config: Option<HookConfig>) -> Result<HookFiles, LoadError> {
        let (wasm, limits) = (wasm.to_owned(), self.limits.clone());
        let name = hook_name(&wasm);
        let file = wasm.clone();
        tokio::task::spawn_blocking(move || read_files(&wasm, config, &limits))
            .await
            .unwrap_or_else(|e| {
                Err(LoadError {
                    hook: name,
                    file,
                    stage: Stage::Read,
                    reason: format!("reading failed: {e}"),
                })
            })
    }

    /// Compiles, links and sets a hook up.
    async fn build(&self, files: HookFiles) -> Result<LiveHook, LoadError> {
        let HookFiles {
            name,
            wasm,
            bytes,
            wasm_hash,
            hash,
            config,
            limits,
            policy,
        } = files;
        let fail = |stage, reason| LoadError {
            hook: name.clone(),
            file: wasm.clone(),
            stage,
            reason,
        };
        let refuse_reuse = |why: &str| {
            Err(LoadError {
                file: wasm.with_extension("toml"),
                ..fail(Stage::Setup, format!("`[reuse]`: {why}: remove the table"))
            })
        };
        if config.reuse.is_some() && crate::sandbox::built_by_go(&bytes) {
            return refuse_reuse(
                "a Go hook cannot serve more than one event per instance (Go's \
                 garbage collector breaks a reused instance)",
            );
        }
        // The pre-initialiser rewrites the original bytes.
        let original: Option<Arc<[u8]>> = config.preinitialize.then(|| bytes.as_slice().into());
        let component = self
            .sandbox
            .compile(&wasm_hash, bytes)
            .await
            .map_err(|e| fail(Stage::Compile, e))?;
        let pre = self
            .sandbox
            .link(&component)
            .map_err(|e| fail(Stage::Link, e))?;
        if matches!(pre, Pre::Command(_)) && config.reuse.is_some() {
            return refuse_reuse(
                "it is for component hooks; a WASI command runs once per instance",
            );
        }
        if matches!(pre, Pre::Command(_)) && config.preinitialize {
            return Err(LoadError {
                file: wasm.with_extension("toml"),
                ..fail(
                    Stage::Setup,
                    "`preinitialize` is for component hooks, which have a `setup`; \
                     remove it"
                        .into(),
                )
            });
        }
        let mut prepared = Prepared {
            name: name.as_str().into(),
            pre,
            settings_json: config.settings_json().into(),
            limits,
            warm: config.reuse.map(|r| self.sandbox.warm_pool(r)),
        };
        let mut initialized_hash = None;
        let subscription = match (&prepared.pre, &config.subscription) {
            (Pre::Command(_), Some(s)) => Subscription {
                methods: s.methods.clone(),
                phases: s.phases.clone(),
            },
            (Pre::Command(_), None) => {
                return Err(LoadError {
                    file: wasm.with_extension("toml"),
                    ..fail(
                        Stage::Setup,
                        "a WASI command hook takes its subscription from its NAME.toml: \
                         add `[subscription]` with `methods = [\"vm.*\"]` and \
                         `phases = [\"post\"]` (say which)"
                            .into(),
                    )
                });
            }
            (Pre::Hook(_), Some(_)) => {
                return Err(LoadError {
                    file: wasm.with_extension("toml"),
                    ..fail(
                        Stage::Setup,
                        "`[subscription]` is for WASI command hooks; this component's \
                         `setup` returns its own: remove the table"
                            .into(),
                    )
                });
            }
            (Pre::Hook(_), None) => {
                let set_up = if let Some(original) = original {
                    self.sandbox.set_up(&prepared, original).await
                } else {
                    self.sandbox.setup(&prepared).await.map(SetUp::alone)
                };
                let set_up = set_up.map_err(|f| {
                    let reason = match f {
                        Failure::Returned(message) => {
                            format!("setup refused the settings: {message}")
                        }
                        Failure::Timeout(d, _) => {
                            format!("setup did not finish within the deadline of {d:?}")
                        }
                        Failure::MemoryCap(mib) => {
                            format!("setup exceeded the memory cap of {mib} MiB")
                        }
                        Failure::Trap(message) => format!("setup trapped: {message}"),
                    };
                    fail(Stage::Setup, reason)
                })?;
                if let Some(initialized) = set_up.initialized {
                    prepared.pre = initialized;
                }
                initialized_hash = set_up.initialized_hash;
                set_up.subscription
            }
            (Pre::Initialized(_), _) => unreachable!("`link` never pre-initialises"),
        };
        let methods = subscription
            .methods
            .iter()
            .map(|m| WildMatch::new(m))
            .collect();
        Ok(LiveHook {
            prepared,
            stats: self.stats_for(&name),
            file: wasm,
            hash,
            wasm_hash,
            initialized_hash,
            config,
            policy,
            subscription,
            methods,
            loaded_at: SystemTime::now(),
        })
    }

    /// Status of every hook, live or failed, by name.
    pub fn statuses(&self) -> Vec<HookStatus> {
        let snapshot = self.snapshot();
        let mut names: Vec<&String> = snapshot.live.keys().chain(snapshot.failed.keys()).collect();
        names.sort();
        names.dedup();
        let stats = self.stats.lock().unwrap();
        names
            .into_iter()
            .map(|name| {
                let live = snapshot.live.get(name);
                let last_error = snapshot.failed.get(name).cloned();
                let counters = stats.get(name).cloned().unwrap_or_default();
                HookStatus {
                    name: name.clone(),
                    state: if live.is_some() {
                        HookState::Live
                    } else {
                        HookState::Failed
                    },
                    file: live
                        .map(|h| h.file.clone())
                        .or_else(|| last_error.as_ref().map(|e| e.file.with_extension("wasm")))
                        .unwrap_or_default(),
                    hash: live.map(|h| h.hash.clone()),
                    loaded_at: live
                        .map(|h| humantime::format_rfc3339_millis(h.loaded_at).to_string()),
                    abi: live.map(|h| match h.prepared.pre {
                        Pre::Hook(_) | Pre::Initialized(_) => Abi::Component,
                        Pre::Command(_) => Abi::Command,
                    }),
                    preinitialized: live.map(|h| matches!(h.prepared.pre, Pre::Initialized(_))),
                    warm: live.and_then(|h| h.prepared.warm.as_ref().map(|p| p.idle())),
                    subscription: live.map(|h| h.subscription.clone()),
                    on_error: live.map(|h| h.config.on_error),
                    mode: live.map(|h| h.config.mode),
                    wait: live.map(|h| h.config.wait),
                    // Filled in by the engine, which holds the reports.
                    coverage: None,
                    last_error,
                    calls: counters.calls.get(),
                    errors: counters.errors.get(),
                    timeouts: counters.timeouts.get(),
                    denials: counters.denials.get(),
                    would_deny: counters.would_deny.get(),
                    loads: counters.loads.get(),
                    load_failures: counters.load_failures.get(),
                }
            })
            .collect()
    }
}

/// Reads `wasm` and its `NAME.toml` (unless `config` is given), checks
/// the settings, and hashes them.
fn read_files(
    wasm: &Path,
    config: Option<HookConfig>,
    engine: &Limits,
) -> Result<HookFiles, LoadError> {
    let name = hook_name(wasm);
    let toml_path = wasm.with_extension("toml");
    let fail = |file: &Path, stage, reason: String| LoadError {
        hook: name.clone(),
        file: file.to_owned(),
        stage,
        reason,
    };
    let bytes =
        read_regular(wasm, MAX_WASM_BYTES).map_err(|e| fail(wasm, Stage::Read, e.to_string()))?;
    let (config, toml_text) = match config {
        Some(config) => (config, String::new()),
        None => match read_regular(&toml_path, MAX_TOML_BYTES) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| fail(&toml_path, Stage::Read, "it is not UTF-8 text".into()))?;
                let config = HookConfig::from_toml(&text)
                    .map_err(|e| fail(&toml_path, Stage::Settings, e.to_string()))?;
                (config, text)
            }
            Err(e) if e.is_not_found() => (HookConfig::default(), String::new()),
            Err(e) => return Err(fail(&toml_path, Stage::Read, e.to_string())),
        },
    };
    let limits = config
        .limits(engine)
        .map_err(|e| fail(&toml_path, Stage::Settings, e))?;
    let policy = DeliveryPolicy::new(&config, toml_path.parent().unwrap_or(Path::new(".")))
        .map(Arc::new)
        .map_err(|e| fail(&toml_path, Stage::Settings, e))?;
    let wasm_hash = hex(&Sha256::digest(&bytes));
    let hash = hex(&Sha256::new()
        .chain_update(&bytes)
        .chain_update(&toml_text)
        .finalize());
    Ok(HookFiles {
        name,
        wasm: wasm.to_owned(),
        bytes,
        wasm_hash,
        hash,
        config,
        limits,
        policy,
    })
}

/// A hook's files, read and hashed, not yet compiled.
struct HookFiles {
    name: String,
    wasm: PathBuf,
    bytes: Vec<u8>,
    wasm_hash: String,
    hash: String,
    config: HookConfig,
    limits: HookLimits,
    policy: Arc<DeliveryPolicy>,
}

/// The `*.wasm` files of a folder, sorted; hidden files are skipped.
pub(crate) fn hook_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        // Whatever its type: a `NAME.wasm` that is not a regular file (a
        // symlink to a folder, a FIFO) is a load error, not a removal.
        if !hidden && path.extension().is_some_and(|e| e == "wasm") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A hook's name: its file name without `.wasm`.
pub(crate) fn hook_name(wasm: &Path) -> String {
    wasm.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 12 hex digits, for logs.
pub(crate) fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
