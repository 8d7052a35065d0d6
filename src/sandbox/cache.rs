//! The compiled-hook cache on disk.

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled components on disk: `HASH-ENGINE.cwasm`, where HASH is the
/// component's SHA-256 and ENGINE the engine's compatibility fingerprint, so
/// a different wasmtime or setting never loads a stale artifact.
///
/// Each file is a magic, a SHA-256 of the artifact, then the artifact: a
/// corrupt file is detected before wasmtime sees it, and recompiled. Files
/// are written to a temporary name and renamed, never rewritten in place,
/// and read into memory rather than mapped.
pub(super) struct DiskCache {
    pub(super) dir: PathBuf,
    pub(super) fingerprint: String,
}

pub(super) const CACHE_MAGIC: &[u8; 8] = b"WHCACHE1";

/// A compiled-hook cache entry unused this long is deleted when an engine
/// starts: hooks change, and each version leaves its own entry.
pub(super) const CACHE_UNUSED: Duration = Duration::from_secs(30 * 86_400);

impl DiskCache {
    pub(super) fn new(dir: PathBuf, engine: &Engine) -> DiskCache {
        struct Hasher(Sha256);
        impl std::hash::Hasher for Hasher {
            fn finish(&self) -> u64 {
                unreachable!("only write() is used")
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut hasher = Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let digest = hasher.0.finalize();
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        DiskCache { dir, fingerprint }
    }

    pub(super) fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.fingerprint))
    }

    /// Deletes entries no engine has used for [`CACHE_UNUSED`] (their
    /// modification time is refreshed on every use), and temporary files
    /// left by a crash. Other files in the folder are left alone.
    pub(super) fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return; // not created yet
        };
        let now = std::time::SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let max_age = if name.ends_with(".cwasm") {
                CACHE_UNUSED
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                Duration::from_secs(3600)
            } else {
                continue;
            };
            let unused = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > max_age);
            if unused && let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!("cannot prune {}: {e}", entry.path().display());
            }
        }
    }

    /// The cached component, or `None` if absent, corrupt or stale (logged).
    pub(super) fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        // In use: not to be pruned (best effort; a failure only costs a recompile later).
        let _ = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        let artifact = match bytes.split_at_checked(CACHE_MAGIC.len() + 32) {
            Some((head, artifact))
                if &head[..8] == CACHE_MAGIC && head[8..] == Sha256::digest(artifact)[..] =>
            {
                artifact
            }
            _ => {
                tracing::warn!(
                    "compiled-hook cache entry {} is corrupt; recompiling",
                    path.display()
                );
                return None;
            }
        };
        // SAFETY: the checksum shows these are the bytes we serialized with
        // an engine of the same fingerprint.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(
                    "compiled-hook cache entry {} is unusable ({e}); recompiling",
                    path.display()
                );
                None
            }
        }
    }

    /// Writes the component; failures only cost a recompile later, so they are logged.
    pub(super) fn store(&self, hash: &str, component: &Component) {
        let result = (|| -> Result<(), String> {
            let artifact = component.serialize().map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
            let tmp = self.dir.join(format!(".{hash}.{}.tmp", fastrand::u64(..)));
            let mut file = Vec::with_capacity(artifact.len() + 40);
            file.extend_from_slice(CACHE_MAGIC);
            file.extend_from_slice(&Sha256::digest(&artifact));
            file.extend_from_slice(&artifact);
            std::fs::write(&tmp, &file).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, self.path(hash)).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                e.to_string()
            })
        })();
        if let Err(e) = result {
            tracing::warn!(
                "cannot write to the compiled-hook cache {}: {e}",
                self.dir.display()
            );
        }
    }
}
