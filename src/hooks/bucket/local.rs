//! An engine's own copy of the bucket's sets, in its state folder
//! (`hooks-bucket/`): the files by digest (`files/`), each set it loaded
//! as a folder of hooks (`sets/N/`, hard links to the files), and which
//! set last loaded whole (`good`), so a restart serves it at once, with
//! or without NATS.

use super::{BucketError, Manifest};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub(super) struct Local {
    root: PathBuf,
    /// Files kept or checked by this process: whole, not read again.
    checked: std::sync::Mutex<HashSet<String>>,
    /// Held while this engine follows the bucket: two engines on one
    /// state folder would remove each other's sets.
    _lock: std::fs::File,
}

/// How long opening waits for the lock (an engine before it in this
/// process may still be letting go of it).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Local {
    pub(super) fn open(state: &Path) -> Result<Local, BucketError> {
        let root = state.join("hooks-bucket");
        for dir in [root.join("files"), root.join("sets")] {
            std::fs::create_dir_all(&dir).map_err(|e| BucketError::local(&dir, e))?;
        }
        let path = root.join("lock");
        let lock = std::fs::File::create(&path).map_err(|e| BucketError::local(&path, e))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(BucketError::local(
                        &path,
                        std::io::Error::other(
                            "another wasmhooks engine is using this state folder; give each \
                             engine its own --state",
                        ),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(BucketError::local(&path, e)),
            }
        }
        Ok(Local {
            root,
            checked: Default::default(),
            _lock: lock,
        })
    }

    /// The last set that loaded whole, and its folder.
    pub(super) fn good(&self) -> Option<(u64, PathBuf)> {
        let text = std::fs::read_to_string(self.root.join("good")).ok()?;
        let version: u64 = text.trim().parse().ok()?;
        let dir = self.set_dir(version);
        dir.is_dir().then_some((version, dir))
    }

    /// Whether the file of this digest is kept, whole: one that is not
    /// (cut short by a crash before this process) is removed, to be
    /// fetched again. Read once per process and file.
    pub(super) fn valid(&self, digest: &str) -> bool {
        use sha2::{Digest, Sha256};
        if self.checked.lock().unwrap().contains(digest) {
            return true;
        }
        let path = self.file(digest);
        match std::fs::read(&path) {
            Ok(bytes) if crate::util::hex(&Sha256::digest(&bytes)) == digest => {
                self.checked.lock().unwrap().insert(digest.to_owned());
                true
            }
            Ok(_) => {
                tracing::warn!("{} is damaged: fetching it again", path.display());
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(_) => false,
        }
    }

    fn file(&self, digest: &str) -> PathBuf {
        self.root.join("files").join(digest)
    }

    fn set_dir(&self, version: u64) -> PathBuf {
        self.root.join("sets").join(version.to_string())
    }

    /// Keeps a file whose digest was checked: written aside and synced,
    /// then renamed, so a crash leaves it whole or absent.
    pub(super) fn keep(&self, digest: &str, bytes: &[u8]) -> Result<(), BucketError> {
        use std::io::Write as _;
        let path = self.file(digest);
        let part = path.with_extension("part");
        std::fs::File::create(&part)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&part, &path))
            .and_then(|()| std::fs::File::open(self.root.join("files"))?.sync_all())
            .map_err(|e| BucketError::local(&path, e))?;
        self.checked.lock().unwrap().insert(digest.to_owned());
        Ok(())
    }

    /// The set as a folder of hooks, `sets/VERSION/`, from files kept.
    pub(super) fn build(&self, version: u64, manifest: &Manifest) -> Result<PathBuf, BucketError> {
        let dir = self.set_dir(version);
        let part = self.root.join("sets").join(format!(".{version}.part"));
        let local = |path: &Path, e| BucketError::local(path, e);
        for stale in [&dir, &part] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| local(stale, e))?;
            }
        }
        std::fs::create_dir(&part).map_err(|e| local(&part, e))?;
        for (name, hook) in &manifest.hooks {
            for (ext, digest) in hook.files() {
                let to = part.join(format!("{name}.{ext}"));
                let from = self.file(digest);
                std::fs::hard_link(&from, &to)
                    .or_else(|_| std::fs::copy(&from, &to).map(drop))
                    .map_err(|e| local(&to, e))?;
            }
        }
        std::fs::rename(&part, &dir).map_err(|e| local(&dir, e))?;
        Ok(dir)
    }

    /// Records that `version` loaded whole, then removes the sets no live
    /// hook comes from, and the files of no set kept.
    pub(super) fn loaded(
        &self,
        version: u64,
        manifest: &Manifest,
        in_use: &HashSet<PathBuf>,
    ) -> Result<(), BucketError> {
        let good = self.root.join("good");
        let part = self.root.join(".good.part");
        std::fs::write(&part, format!("{version}\n"))
            .and_then(|()| std::fs::File::open(&part)?.sync_all())
            .and_then(|()| std::fs::rename(&part, &good))
            .map_err(|e| BucketError::local(&good, e))?;
        let keep_dir = self.set_dir(version);
        if let Ok(entries) = std::fs::read_dir(self.root.join("sets")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path != keep_dir && !in_use.contains(&path) {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        // The sets kept hold their own links to their files.
        let wanted: HashSet<&str> = manifest
            .hooks
            .values()
            .flat_map(|h| h.files().map(|(_, d)| d))
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.root.join("files")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if !wanted.contains(name.as_ref()) {
                    self.checked.lock().unwrap().remove(name.as_ref());
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Removes a set's folder (a set that was refused).
    pub(super) fn drop_set(&self, version: u64) {
        let _ = std::fs::remove_dir_all(self.set_dir(version));
    }
}
