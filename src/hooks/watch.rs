//! Hot reload: watch the hooks folder and reconcile the registry with it.
//!
//! Every file event leads to a [`Registry::reconcile`] of the whole folder,
//! which loads what changed off to the side and swaps it in atomically. So
//! adds, in-place rewrites, renames (within the folder or across its
//! boundary), removals, `NAME.toml` edits and the folder itself appearing
//! or being replaced all take the same path.
//!
//! A file written in place is left alone until its writer closes it
//! (inotify's close-after-write), or it has been quiet for `settle`, so a
//! half-written file is not even tried. Temporary and hidden files are
//! ignored; the recommended way to replace a hook is still to write a
//! temporary file and rename it into place.

use crate::hooks::{Force, Registry, WatchError, hook_files, hook_name};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events closer together than this are handled as one batch.
const DEBOUNCE: Duration = Duration::from_millis(2);
/// File events buffered between batches; past this, a full rescan is done instead.
const EVENT_BUFFER: usize = 4096;

/// Watches a hooks folder until dropped.
pub(crate) struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the watcher behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchOptions {
    /// How long a file being written in place may stay quiet before it is loaded anyway.
    pub settle: Duration,
    /// How often to rescan the whole folder, in case an event was missed.
    pub rescan: Duration,
}

impl Watch {
    /// Starts watching `dir` (which need not exist yet) and its parent.
    pub(crate) fn start(
        registry: Arc<Registry>,
        dir: PathBuf,
        options: WatchOptions,
    ) -> Result<Watch, WatchError> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let overflow = Arc::new(AtomicBool::new(false));
        let overflowed = overflow.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    if tx.try_send(event).is_err() {
                        overflowed.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::warn!("file watcher: {e}; rescanning");
                    overflowed.store(true, Ordering::Relaxed);
                }
            })
            .map_err(WatchError::Start)?;
        // The parent tells us when the folder itself is created, replaced or removed.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            watcher
                .watch(parent, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Watch {
                    path: parent.to_owned(),
                    source,
                })?;
        }
        watch_dir(&mut watcher, &dir);
        let task = tokio::spawn(run(registry, dir, options, watcher, rx, overflow));
        Ok(Watch { task })
    }
}

/// (Re)attaches the watch on the hooks folder; a missing folder is fine.
fn watch_dir(watcher: &mut RecommendedWatcher, dir: &Path) {
    let _ = watcher.unwatch(dir);
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => {}
        Err(e) if dir.exists() => tracing::warn!(
            "cannot watch {}: {e}; relying on periodic rescans",
            dir.display()
        ),
        Err(_) => tracing::warn!(
            "hooks folder {} does not exist (yet); waiting for it",
            dir.display()
        ),
    }
}

async fn run(
    registry: Arc<Registry>,
    dir: PathBuf,
    options: WatchOptions,
    mut watcher: RecommendedWatcher,
    mut rx: mpsc::Receiver<notify::Event>,
    overflow: Arc<AtomicBool>,
) {
    // Hooks with a file open for writing, and when it was last written.
    let mut writing: HashMap<String, Instant> = HashMap::new();
    let mut next_rescan = Instant::now() + options.rescan;
    loop {
        let wake = writing
            .values()
            .map(|t| *t + options.settle)
            .chain([next_rescan])
            .min()
            .unwrap_or(next_rescan);
        let mut batch = Vec::new();
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => batch.push(event),
                None => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        // Gather the rest of a burst.
        while let Ok(Some(event)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            batch.push(event);
        }

        let mut force = HashSet::new();
        let mut rewatch = overflow.swap(false, Ordering::Relaxed);
        let mut rescan = rewatch || Instant::now() >= next_rescan;
        for event in &batch {
            for path in &event.paths {
                if path == &dir {
                    // The folder itself was created, moved or removed (our
                    // own reads of it show up as access events: ignore those).
                    if !matches!(event.kind, EventKind::Access(_)) {
                        rewatch = true;
                        rescan = true;
                    }
                    continue;
                }
                if path.parent() != Some(dir.as_path()) {
                    continue;
                }
                let Some(name) = hook_file_name(path) else {
                    continue;
                };
                match event.kind {
                    EventKind::Create(_)
                    | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                        writing.insert(name, Instant::now());
                    }
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                        writing.remove(&name);
                        force.insert(name);
                    }
                    EventKind::Access(_) => {}
                    _ => {
                        // Renamed into or out of place, removed, attributes changed.
                        writing.remove(&name);
                        force.insert(name);
                    }
                }
            }
        }
        // A writer quiet for `settle` is taken as done (e.g. one that never closes).
        let now = Instant::now();
        writing.retain(|name, last| {
            let settled = now >= *last + options.settle;
            if settled {
                force.insert(name.clone());
            }
            !settled
        });
        if rewatch {
            watch_dir(&mut watcher, &dir);
            // A folder that just appeared is taken as it is: look at every file now.
            force.extend(
                hook_files(&dir)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| hook_name(f)),
            );
        }
        if rescan {
            next_rescan = Instant::now() + options.rescan;
        }
        if force.is_empty() && !rescan {
            continue;
        }
        let unsettled: HashSet<String> = writing.keys().cloned().collect();
        if let Err(e) = registry
            .reconcile(&dir, Force::These(&force), &unsettled, options.settle)
            .await
        {
            tracing::error!("{e}");
        }
    }
}

/// The hook a file belongs to: `NAME` for `NAME.wasm`, `NAME.toml` or
/// `NAME.sig`;
/// `None` for hidden, temporary and other files.
fn hook_file_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let is_hook_file = path
        .extension()
        .is_some_and(|e| matches!(e.to_str(), Some("wasm" | "toml" | "sig")));
    (!file.starts_with('.') && is_hook_file).then(|| hook_name(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hook_files_count() {
        assert_eq!(
            hook_file_name(Path::new("/h/slack.wasm")).as_deref(),
            Some("slack")
        );
        assert_eq!(
            hook_file_name(Path::new("/h/slack.toml")).as_deref(),
            Some("slack")
        );
        assert_eq!(
            hook_file_name(Path::new("/h/slack.sig")).as_deref(),
            Some("slack")
        );
        for ignored in [
            "/h/.slack.wasm.swp",
            "/h/slack.wasm~",
            "/h/.#slack.toml",
            "/h/4913",
            "/h/slack.wasm.tmp",
            "/h/notes.txt",
        ] {
            assert_eq!(hook_file_name(Path::new(ignored)), None, "{ignored}");
        }
    }
}
