//! Loading one hook: its files read and checked (its signature too, where
//! `[trust]` asks for one), compiled, linked, set up.

use super::{LiveHook, Registry};
use super::{LoadError, Stage};
use crate::config::{HookConfig, HookLimits, Limits};
use crate::delivery::DeliveryPolicy;
use crate::util::hex;

use crate::files::{MAX_SIGNATURE_BYTES, MAX_TOML_BYTES, MAX_WASM_BYTES, read_regular};
use crate::sandbox::{Failure, Linked, Prepared, SetUp, Subscription};
use crate::trust::{PublicKey, signature_path};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use wildmatch::WildMatch;

impl Registry {
    /// Loads one hook off to the side: read, compile, link, `setup`. Its
    /// config comes from `NAME.toml` beside it unless `config` is given.
    pub(crate) async fn load(
        &self,
        wasm: &Path,
        settings: SettingsFrom,
    ) -> Result<LiveHook, LoadError> {
        self.build(self.read(wasm, settings).await?).await
    }

    /// Reads a hook's files and hashes them, on a blocking thread: the
    /// folder's files are the operator's, and reading one (or a `file:`
    /// secret) must never stall the async runtime.
    pub(super) async fn read(
        &self,
        wasm: &Path,
        settings: SettingsFrom,
    ) -> Result<HookFiles, LoadError> {
        let (wasm, limits, trust) = (wasm.to_owned(), self.limits.clone(), self.trust.clone());
        let name = hook_name(&wasm);
        let file = wasm.clone();
        tokio::task::spawn_blocking(move || read_files(&wasm, settings, &limits, trust.as_deref()))
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
    pub(super) async fn build(&self, files: HookFiles) -> Result<LiveHook, LoadError> {
        let HookFiles {
            name,
            wasm,
            bytes,
            wasm_hash,
            hash,
            config,
            signed_by,
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
            .map_err(|e| fail(Stage::Compile, e.to_string()))?;
        let pre = self
            .sandbox
            .link(&component)
            .map_err(|e| fail(Stage::Link, e.to_string()))?;
        if matches!(pre, Linked::Command(_)) && config.reuse.is_some() {
            return refuse_reuse(
                "it is for component hooks; a WASI command runs once per instance",
            );
        }
        if matches!(pre, Linked::Command(_)) && config.preinitialize {
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
            linked: pre,
            settings_json: config.settings_json().into(),
            limits,
            warm: config.reuse.map(|r| self.sandbox.warm_pool(r)),
        };
        let mut initialized_hash = None;
        let subscription = match (&prepared.linked, &config.subscription) {
            (Linked::Command(_), Some(s)) => Subscription {
                methods: s.methods.clone(),
                phases: s.phases.clone(),
            },
            (Linked::Command(_), None) => {
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
            (Linked::Hook(_), Some(_)) => {
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
            (Linked::Hook(_), None) => {
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
                    prepared.linked = initialized;
                }
                initialized_hash = set_up.initialized_hash;
                set_up.subscription
            }
            (Linked::Initialized(_), _) => unreachable!("`link` never pre-initialises"),
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
            signed_by,
            policy,
            subscription,
            methods,
            loaded_at: SystemTime::now(),
        })
    }
}

/// Where a hook's settings come from, when it is loaded alone (a dry run,
/// a simulation).
pub(crate) enum SettingsFrom {
    /// `NAME.toml` beside the `.wasm`, if there is one, as in the folder.
    Beside,
    /// This file, which must exist; its `file:` secrets are relative to
    /// its folder, and it counts in the version's hash as `NAME.toml` does.
    File(PathBuf),
    /// These (not part of the version's hash).
    Given(HookConfig),
}

/// Reads `wasm`, checks its signature against `trust` if given, reads its
/// settings (see [`SettingsFrom`]), checks them, and hashes both.
fn read_files(
    wasm: &Path,
    settings: SettingsFrom,
    engine: &Limits,
    trust: Option<&[PublicKey]>,
) -> Result<HookFiles, LoadError> {
    let name = hook_name(wasm);
    let fail = |file: &Path, stage, reason: String| LoadError {
        hook: name.clone(),
        file: file.to_owned(),
        stage,
        reason,
    };
    let bytes =
        read_regular(wasm, MAX_WASM_BYTES).map_err(|e| fail(wasm, Stage::Read, e.to_string()))?;
    // Before the settings are even parsed: an untrusted module gets no
    // further than this.
    let signed_by = match trust {
        None => None,
        Some(keys) => {
            let path = signature_path(wasm);
            let text =
                match read_regular(&path, MAX_SIGNATURE_BYTES) {
                    Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| {
                        fail(&path, Stage::Signature, "it is not UTF-8 text".into())
                    })?),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(fail(&path, Stage::Read, e.to_string())),
                };
            let key = crate::trust::verify(keys, &bytes, text.as_deref())
                .map_err(|e| fail(&path, Stage::Signature, e.to_string()))?;
            Some(key)
        }
    };
    let (toml_path, must_exist) = match &settings {
        SettingsFrom::File(path) => (path.clone(), true),
        _ => (wasm.with_extension("toml"), false),
    };
    let (config, toml_text) = match settings {
        SettingsFrom::Given(config) => (config, String::new()),
        SettingsFrom::Beside | SettingsFrom::File(_) => {
            match read_regular(&toml_path, MAX_TOML_BYTES) {
                Ok(bytes) => {
                    let text = String::from_utf8(bytes).map_err(|_| {
                        fail(&toml_path, Stage::Read, "it is not UTF-8 text".into())
                    })?;
                    let config = HookConfig::from_toml(&text)
                        .map_err(|e| fail(&toml_path, Stage::Settings, e.to_string()))?;
                    (config, text)
                }
                Err(e) if e.is_not_found() && !must_exist => (HookConfig::default(), String::new()),
                Err(e) => return Err(fail(&toml_path, Stage::Read, e.to_string())),
            }
        }
    };
    let limits = config
        .limits(engine)
        .map_err(|e| fail(&toml_path, Stage::Settings, e.to_string()))?;
    let policy = DeliveryPolicy::new(&config, toml_path.parent().unwrap_or(Path::new(".")))
        .map(Arc::new)
        .map_err(|e| fail(&toml_path, Stage::Settings, e.to_string()))?;
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
        signed_by,
        limits,
        policy,
    })
}

/// A hook's files, read and hashed, not yet compiled.
pub(super) struct HookFiles {
    name: String,
    wasm: PathBuf,
    bytes: Vec<u8>,
    wasm_hash: String,
    pub(super) hash: String,
    config: HookConfig,
    pub(super) signed_by: Option<String>,
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

/// The first 12 hex digits, for logs.
pub(crate) fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
