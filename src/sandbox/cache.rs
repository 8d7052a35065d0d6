//! The compiled-hook cache on disk.

use super::CacheError;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled components on disk: `HASH-ENGINE.cwasm`, where HASH is the
/// component's SHA-256 and ENGINE the engine's compatibility fingerprint, so
/// a different wasmtime or setting never loads a stale artifact.
///
/// An artifact is native code: loading one runs it. So the folder is
/// private (created 0700; refused if another user owns it or others may
/// write to it), and each file is a magic, an HMAC-SHA256 of its name and
/// the artifact under the cache's own key (`.key`, 0600, random), then the
/// artifact: a corrupt, planted, edited or renamed file is recompiled,
/// never loaded. Files are written to a temporary name and renamed, never
/// rewritten in place, and read into memory rather than mapped.
pub(super) struct DiskCache {
    pub(super) dir: PathBuf,
    pub(super) fingerprint: String,
    key: [u8; 32],
}

pub(super) const CACHE_MAGIC: &[u8; 8] = b"WHCACHE2";

/// The cache's key file, beside its entries.
const KEY_FILE: &str = ".key";

/// A compiled-hook cache entry unused this long is deleted when an engine
/// starts: hooks change, and each version leaves its own entry.
pub(super) const CACHE_UNUSED: Duration = Duration::from_secs(30 * 86_400);

impl DiskCache {
    /// The cache in `dir`, made private if new; `None` (logged) if the
    /// folder or its key cannot be trusted or made.
    pub(super) fn open(dir: PathBuf, engine: &Engine) -> Option<DiskCache> {
        match private_key(&dir) {
            Ok(key) => Some(DiskCache::new(dir, engine, key)),
            Err(why) => {
                tracing::warn!(
                    "not using the compiled-hook cache {}: {why}; hooks are compiled at every start",
                    dir.display()
                );
                None
            }
        }
    }

    fn new(dir: PathBuf, engine: &Engine, key: [u8; 32]) -> DiskCache {
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
        DiskCache {
            dir,
            fingerprint,
            key,
        }
    }

    /// The MAC of an entry: its name (content hash and engine) and artifact.
    fn mac(&self, hash: &str, artifact: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(hash.as_bytes());
        mac.update(b"\0");
        mac.update(self.fingerprint.as_bytes());
        mac.update(b"\0");
        mac.update(artifact);
        mac
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
                if &head[..8] == CACHE_MAGIC
                    && self.mac(hash, artifact).verify_slice(&head[8..]).is_ok() =>
            {
                artifact
            }
            _ => {
                tracing::warn!(
                    "compiled-hook cache entry {} is corrupt, or was not written by this \
                     cache; recompiling",
                    path.display()
                );
                return None;
            }
        };
        // SAFETY: the MAC shows these are the bytes this cache serialized,
        // for this content hash, with an engine of the same fingerprint.
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
        if let Err(e) = self.try_store(hash, component) {
            tracing::warn!("not kept in the compiled-hook cache: {e}");
        }
    }

    fn try_store(&self, hash: &str, component: &Component) -> Result<(), CacheError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { what, path, source }
        };
        let artifact = component.serialize().map_err(CacheError::Serialize)?;
        std::fs::create_dir_all(&self.dir).map_err(io("cannot create", &self.dir))?;
        let tmp = self.dir.join(format!(".{hash}.{}.tmp", fastrand::u64(..)));
        let mut file = Vec::with_capacity(artifact.len() + 40);
        file.extend_from_slice(CACHE_MAGIC);
        file.extend_from_slice(&self.mac(hash, &artifact).finalize().into_bytes());
        file.extend_from_slice(&artifact);
        std::fs::write(&tmp, &file).map_err(io("cannot write", &tmp))?;
        std::fs::rename(&tmp, self.path(hash)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("cannot rename", &tmp)(e)
        })
    }
}

/// Makes `dir` (0700) if it is missing, checks that it is this user's and
/// that no one else may write to it, and reads its key, or makes one.
fn private_key(dir: &Path) -> Result<[u8; 32], CacheError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| CacheError::Io { what, path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("cannot create", dir))?;
    let me = unsafe { libc::geteuid() };
    let trusted = |path: &Path, others: u32| -> Result<(), CacheError> {
        let meta = std::fs::symlink_metadata(path).map_err(io("cannot inspect", path))?;
        if meta.uid() != me {
            return Err(CacheError::Owner {
                path: path.to_owned(),
                uid: meta.uid(),
            });
        }
        if meta.mode() & others != 0 {
            return Err(CacheError::Mode {
                path: path.to_owned(),
                mode: meta.mode() & 0o777,
            });
        }
        Ok(())
    };
    trusted(dir, 0o022)?;
    let path = dir.join(KEY_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let mut key = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut random| random.read_exact(&mut key))
                .map_err(io("cannot make a key from", Path::new("/dev/urandom")))?;
            file.write_all(&key)
                .and_then(|()| file.sync_all())
                .map_err(io("cannot write", &path))?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            trusted(&path, 0o077)?;
            let bytes =
                crate::files::read_regular(&path, 32).map_err(|source| CacheError::Read {
                    path: path.clone(),
                    source,
                })?;
            bytes
                .try_into()
                .map_err(|_| CacheError::NotAKey(path.clone()))
        }
        Err(e) => Err(io("cannot create", &path)(e)),
    }
}
