//! Reading the archive back, oldest first, a page at a time: for
//! `wasmhooks events export`, `wasmhooks simulate` and the engine's own
//! `POST /v1/simulate`, while engines may be writing to it.

use super::ArchivedEvent;
use crate::config::Config;
use crate::queue::{Queue, QueueError};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::path::Path;
use std::sync::Arc;

/// Records read per page.
const PAGE: usize = 500;

/// Why the archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The queue's store, which holds the archive, failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A record that does not parse (written by a newer wasmhooks?).
    #[error("archived event {seq} cannot be read: {source}")]
    Record {
        /// Its place in the archive.
        seq: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The archive of an engine's queue, for reading.
#[derive(Clone)]
pub struct Archive {
    queue: Arc<dyn Queue>,
}

impl Archive {
    /// The archive in the state folder `dir` (SQLite), also while an
    /// engine runs on it.
    pub fn open(dir: &Path) -> Result<Archive, ArchiveError> {
        Ok(Archive {
            queue: crate::queue::SqliteQueue::inspect(dir)?,
        })
    }

    /// The archive of the queue `config` names (`queue` and `state_dir`).
    pub async fn connect(config: &Config) -> Result<Archive, ArchiveError> {
        Ok(Archive {
            queue: crate::queue::inspect(config).await?,
        })
    }

    /// The archive of an engine's own queue.
    pub(crate) fn of(queue: Arc<dyn Queue>) -> Archive {
        Archive { queue }
    }

    /// The events archived from `from_ms` (Unix ms) until now (not those
    /// archived while they are read, so it ends however busy the engines
    /// are), oldest first, read a page at a time (memory does not grow with
    /// the archive). A record that cannot be read is an error in its
    /// place, and reading goes on after it.
    pub fn events(&self, from_ms: u64) -> BoxStream<'static, Result<ArchivedEvent, ArchiveError>> {
        struct Cursor {
            queue: Arc<dyn Queue>,
            after: u64,
            page: std::vec::IntoIter<crate::queue::Archived>,
            done: bool,
            until_ms: u64,
        }
        let cursor = Cursor {
            queue: self.queue.clone(),
            after: 0,
            page: Vec::new().into_iter(),
            done: false,
            until_ms: crate::util::now_ms(),
        };
        futures::stream::unfold(cursor, move |mut c| async move {
            loop {
                if let Some(a) = c.page.next() {
                    if a.at_ms > c.until_ms {
                        return None; // archived since reading began
                    }
                    c.after = a.seq;
                    let event = serde_json::from_slice::<ArchivedEvent>(&a.record)
                        .map(|e| ArchivedEvent { seq: a.seq, ..e })
                        .map_err(|source| ArchiveError::Record { seq: a.seq, source });
                    return Some((event, c));
                }
                if c.done {
                    return None;
                }
                match c.queue.archived(from_ms, c.after, PAGE).await {
                    Ok(page) if page.is_empty() => return None,
                    Ok(page) => c.page = page.into_iter(),
                    Err(e) => {
                        c.done = true;
                        return Some((Err(e.into()), c));
                    }
                }
            }
        })
        .boxed()
    }
}
