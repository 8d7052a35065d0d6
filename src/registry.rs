//! The loaded hooks: load each `NAME.wasm` (+ `NAME.toml`), and serve an
//! immutable snapshot of them that swaps atomically.

use crate::config::{HookConfig, Limits, OnError};
use crate::error::{Error, LoadError, Stage};
use crate::event::Event;
use crate::sandbox::{Failure, Prepared, Sandbox, Subscription};
use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use wildmatch::WildMatch;

/// A live hook: compiled, linked, `init`-ed, and taking events.
pub(crate) struct LiveHook {
    pub prepared: Prepared,
    pub file: PathBuf,
    pub hash: String,
    pub config: HookConfig,
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

/// Counters per hook name; they survive reloads.
#[derive(Debug, Default)]
pub(crate) struct HookStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
}

/// One immutable view of the hooks. Readers hold it for a whole event, so a
/// swap never changes the hooks under an event in flight.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// Live hooks, by name.
    pub live: BTreeMap<String, Arc<LiveHook>>,
    /// The last load error per hook name, if its latest file failed.
    pub failed: BTreeMap<String, LoadError>,
}

impl Snapshot {
    /// The live hooks subscribed to this event, in name order.
    pub fn matching(&self, event: &Event) -> Vec<Arc<LiveHook>> {
        self.live
            .values()
            .filter(|h| h.wants(event))
            .cloned()
            .collect()
    }
}

/// Whether a hook is taking events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookState {
    /// Loaded and taking events (possibly an older version, see `last_error`).
    Live,
    /// Never loaded successfully; not taking events.
    Failed,
}

/// What the status API and `check` show for one hook.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    /// The hook's name: its file name without `.wasm`.
    pub name: String,
    /// Live or failed.
    pub state: HookState,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// SHA-256 of the live version's `.wasm` and `.toml`, hex.
    pub hash: Option<String>,
    /// When the live version was loaded, RFC 3339.
    pub loaded_at: Option<String>,
    /// What the live version subscribed to.
    pub subscription: Option<Subscription>,
    /// What a pre verdict does when this hook fails.
    pub on_error: Option<OnError>,
    /// Whether pre events wait for this hook's deliveries.
    pub wait: Option<bool>,
    /// Why the latest file failed to load, if it did.
    pub last_error: Option<LoadError>,
    /// Events handled.
    pub calls: u64,
    /// Events on which the hook failed (timeouts included).
    pub errors: u64,
    /// Events on which the hook hit its deadline.
    pub timeouts: u64,
}

/// The hooks folder's loaded state.
pub(crate) struct Registry {
    sandbox: Arc<Sandbox>,
    limits: Limits,
    snapshot: ArcSwap<Snapshot>,
    stats: Mutex<BTreeMap<String, Arc<HookStats>>>,
}

impl Registry {
    pub fn new(sandbox: Arc<Sandbox>, limits: Limits) -> Registry {
        Registry {
            sandbox,
            limits,
            snapshot: ArcSwap::default(),
            stats: Mutex::default(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Loads every `*.wasm` in `dir`. A hook that fails is recorded with its
    /// error; the others still load.
    pub async fn load_dir(&self, dir: &Path) -> Result<(), Error> {
        let files = hook_files(dir).map_err(|source| Error::HooksDir {
            path: dir.to_owned(),
            source,
        })?;
        let loads = files.iter().map(|file| self.load(file, None));
        let results = futures::future::join_all(loads).await;
        let mut next = Snapshot::default();
        for result in results {
            match result {
                Ok(hook) => {
                    tracing::info!(hook = hook.name(), hash = %short(&hook.hash), subscription = ?hook.subscription, "hook loaded");
                    next.live.insert(hook.name().to_owned(), Arc::new(hook));
                }
                Err(err) => {
                    tracing::error!("{err}");
                    next.failed.insert(err.hook.clone(), err);
                }
            }
        }
        self.snapshot.store(Arc::new(next));
        Ok(())
    }

    /// Loads one hook off to the side: read, compile, link, `init`. Its
    /// config comes from `NAME.toml` beside it unless `config` is given.
    pub async fn load(
        &self,
        wasm: &Path,
        config: Option<HookConfig>,
    ) -> Result<LiveHook, LoadError> {
        let name = hook_name(wasm);
        let toml_path = wasm.with_extension("toml");
        let fail = |file: &Path, stage, reason: String| LoadError {
            hook: name.clone(),
            file: file.to_owned(),
            stage,
            reason,
        };
        let bytes = std::fs::read(wasm).map_err(|e| fail(wasm, Stage::Read, e.to_string()))?;
        let (config, toml_text) = match config {
            Some(config) => (config, String::new()),
            None => match std::fs::read_to_string(&toml_path) {
                Ok(text) => (
                    HookConfig::from_toml(&text)
                        .map_err(|e| fail(&toml_path, Stage::Settings, e))?,
                    text,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (HookConfig::default(), String::new())
                }
                Err(e) => return Err(fail(&toml_path, Stage::Read, e.to_string())),
            },
        };
        self.load_bytes(&name, wasm, bytes, config, &toml_text)
            .await
            .map_err(|(stage, reason)| {
                let file = if stage == Stage::Settings {
                    toml_path.clone()
                } else {
                    wasm.to_owned()
                };
                fail(&file, stage, reason)
            })
    }

    /// Compiles, links and `init`s a hook from its bytes and config.
    async fn load_bytes(
        &self,
        name: &str,
        file: &Path,
        bytes: Vec<u8>,
        config: HookConfig,
        toml_text: &str,
    ) -> Result<LiveHook, (Stage, String)> {
        let limits = config
            .limits(&self.limits)
            .map_err(|e| (Stage::Settings, e))?;
        let wasm_hash = hex(&Sha256::digest(&bytes));
        let hash = hex(&Sha256::new()
            .chain_update(&bytes)
            .chain_update(toml_text)
            .finalize());
        let component = self
            .sandbox
            .compile(&wasm_hash, bytes)
            .await
            .map_err(|e| (Stage::Compile, e))?;
        let pre = self
            .sandbox
            .link(&component)
            .map_err(|e| (Stage::Link, e))?;
        let prepared = Prepared {
            name: name.into(),
            pre,
            settings_json: config.settings_json().into(),
            limits,
        };
        let subscription = self.sandbox.init(&prepared).await.map_err(|f| {
            let reason = match f {
                Failure::Returned(message) => format!("init refused the settings: {message}"),
                Failure::Timeout(d) => format!("init did not finish within the deadline of {d:?}"),
                Failure::MemoryCap(mib) => format!("init exceeded the memory cap of {mib} MiB"),
                Failure::Trap(message) => format!("init trapped: {message}"),
            };
            (Stage::Init, reason)
        })?;
        let methods = subscription
            .methods
            .iter()
            .map(|m| WildMatch::new(m))
            .collect();
        let stats = self
            .stats
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone();
        Ok(LiveHook {
            prepared,
            file: file.to_owned(),
            hash,
            config,
            subscription,
            methods,
            loaded_at: SystemTime::now(),
            stats,
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
                    subscription: live.map(|h| h.subscription.clone()),
                    on_error: live.map(|h| h.config.on_error),
                    wait: live.map(|h| h.config.wait),
                    last_error,
                    calls: counters.calls.load(Ordering::Relaxed),
                    errors: counters.errors.load(Ordering::Relaxed),
                    timeouts: counters.timeouts.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
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
        if !hidden && path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
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
