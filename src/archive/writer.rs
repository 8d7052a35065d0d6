//! Writing the archive: events are handed over on the event's path
//! without waiting (a bounded channel), and written in batches by a task
//! of their own, masked and serialized there.

use super::ArchivedEvent;
use crate::activity::{Allowed, HookActivity};
use crate::config::{ArchiveBounds, ArchiveConfig};
use crate::event::{Event, Phase};
use crate::queue::{Archived, Queue};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};
use wildmatch::WildMatch;

/// Events handed over and not yet written, and their bytes; past either,
/// events are not archived (counted, and logged) rather than slowing the
/// engine down or filling its memory.
pub(crate) const BACKLOG: usize = 16_384;
const BACKLOG_BYTES: usize = 64 * 1024 * 1024;

/// Most records, and bytes of them, written in one batch (one write of
/// the queue's, between its commits).
const BATCH: usize = 1_024;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How often the archive is trimmed to its days when nothing is written.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Keys an event needs to be read back as one: never masked.
const KEPT: [&str; 4] = ["callid", "method", "type", "timestamp"];

/// What replaces a masked value.
pub(crate) const MASKED: &str = "* masked *";

enum Job {
    Record(Box<Entry>),
    /// Answered once everything handed over before it is written.
    Flush(oneshot::Sender<()>),
}

struct Entry {
    at_ms: u64,
    event: Event,
    hooks: Vec<HookActivity>,
    verdict: Option<Allowed>,
}

/// The archive's writer: cheap to call on every event.
pub(crate) struct Archiver {
    jobs: mpsc::Sender<Job>,
    /// Bytes of the events handed over and not yet written.
    backlog: Arc<AtomicUsize>,
    /// Events not archived: the backlog was full, or the write failed.
    lost: Counter,
}

impl Archiver {
    /// Starts the writer task on `queue`. `archived` and `lost` count the
    /// events written, and those that could not be.
    pub(crate) fn start(
        queue: Arc<dyn Queue>,
        config: &ArchiveConfig,
        archived: Counter,
        lost: Counter,
    ) -> Archiver {
        let (jobs, rx) = mpsc::channel(BACKLOG);
        let backlog = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            backlog: backlog.clone(),
            queue,
            bounds: config.bounds(),
            mask: config
                .mask
                .iter()
                .map(|m| WildMatch::new(&m.to_lowercase()))
                .collect(),
            archived,
            lost: lost.clone(),
        };
        tokio::spawn(writer.run(rx));
        Archiver {
            jobs,
            backlog,
            lost,
        }
    }

    /// Archives `event` and what `hooks` decided (with `verdict` for a pre
    /// event); a system event is not archived. Never waits.
    pub(crate) fn record(&self, event: &Event, hooks: Vec<HookActivity>, verdict: Option<Allowed>) {
        if event.phase() == Phase::System {
            return;
        }
        let bytes = event.payload().len();
        let entry = Entry {
            at_ms: crate::util::now_ms(),
            event: event.clone(),
            hooks,
            verdict,
        };
        let sent = if self.backlog.fetch_add(bytes, Ordering::Relaxed) + bytes > BACKLOG_BYTES {
            Err("the archive's writer is behind")
        } else {
            self.jobs
                .try_send(Job::Record(Box::new(entry)))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => "the archive's writer is behind",
                    mpsc::error::TrySendError::Closed(_) => "the archive's writer stopped",
                })
        };
        if let Err(why) = sent {
            self.backlog.fetch_sub(bytes, Ordering::Relaxed);
            let lost = self.lost.inc();
            // The first, then every thousandth: a full backlog is loud
            // enough in the metric.
            if lost.is_multiple_of(1000) {
                tracing::warn!(
                    "an event was not archived ({why}); {} so far \
                     (wasmhooks_archive_lost_total)",
                    lost + 1
                );
            }
        }
    }

    /// Waits until every event handed over so far is written (or lost).
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

struct Writer {
    queue: Arc<dyn Queue>,
    backlog: Arc<AtomicUsize>,
    bounds: ArchiveBounds,
    mask: Vec<WildMatch>,
    archived: Counter,
    lost: Counter,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(BATCH);
        let mut trim = tokio::time::interval(TRIM_EVERY);
        loop {
            let received = tokio::select! {
                n = rx.recv_many(&mut jobs, BATCH) => n,
                _ = trim.tick() => {
                    // Nothing to add: the days are applied all the same.
                    if let Err(e) = self.queue.archive(Vec::new(), self.bounds).await {
                        tracing::warn!("cannot trim the archive: {e}");
                    }
                    continue;
                }
            };
            if received == 0 {
                return; // the engine is gone
            }
            let (mut records, mut bytes) = (Vec::with_capacity(jobs.len()), 0);
            for job in jobs.drain(..) {
                match job {
                    Job::Record(entry) => {
                        let size = entry.event.payload().len();
                        records.push(self.record_of(*entry));
                        bytes += size;
                        if bytes >= BATCH_BYTES {
                            self.write(std::mem::take(&mut records), bytes).await;
                            bytes = 0;
                        }
                    }
                    Job::Flush(done) => {
                        self.write(std::mem::take(&mut records), bytes).await;
                        bytes = 0;
                        let _ = done.send(());
                    }
                }
            }
            self.write(records, bytes).await;
        }
    }

    /// Writes `records` (of events of `bytes` in all), counting them as
    /// archived or lost.
    async fn write(&self, records: Vec<Archived>, bytes: usize) {
        let n = records.len() as u64;
        if n == 0 {
            return;
        }
        match self.queue.archive(records, self.bounds).await {
            Ok(too_large) => {
                self.archived.inc_by(n - too_large as u64);
                self.lost.inc_by(too_large as u64);
            }
            Err(e) => {
                self.lost.inc_by(n);
                tracing::warn!("{n} events could not be archived: {e}");
            }
        }
        self.backlog.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn record_of(&self, entry: Entry) -> Archived {
        let mut event: serde_json::Value =
            serde_json::from_str(entry.event.payload()).expect("an event's payload is JSON");
        if !self.mask.is_empty() {
            mask(&mut event, &self.mask);
        }
        let record = ArchivedEvent {
            seq: 0,
            at_ms: entry.at_ms,
            method: entry.event.method().to_owned(),
            phase: entry.event.phase(),
            call_id: entry.event.call_id().to_owned(),
            allowed: entry.verdict.as_ref().map(|v| v.allowed),
            denied_by: entry.verdict.and_then(|v| v.denied_by),
            hooks: entry.hooks,
            event,
        };
        Archived {
            seq: 0,
            at_ms: entry.at_ms,
            record: serde_json::to_vec(&record).expect("a record always serializes"),
        }
    }
}

/// Replaces the value of every key `mask` matches (keys lowercased),
/// wherever it is in `event`, except the fields that make it an event.
fn mask(event: &mut serde_json::Value, mask: &[WildMatch]) {
    if let serde_json::Value::Object(fields) = event {
        for (key, value) in fields.iter_mut() {
            if !KEPT.contains(&key.to_lowercase().as_str()) {
                mask_field(key, value, mask);
            }
        }
    }
}

/// Replaces `value` if `mask` matches `key` (lowercased), else the value of
/// every key `mask` matches inside it.
fn mask_field(key: &str, value: &mut serde_json::Value, mask: &[WildMatch]) {
    if mask.iter().any(|m| m.matches(&key.to_lowercase())) {
        *value = serde_json::Value::String(MASKED.into());
        return;
    }
    match value {
        serde_json::Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                mask_field(key, value, mask);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                mask_field("", item, mask);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_keys_are_replaced_wherever_they_are_and_nothing_else() {
        let globs: Vec<_> = ["*password*", "*token*", "authorization"]
            .iter()
            .map(|g| WildMatch::new(g))
            .collect();
        let mut event = serde_json::json!({
            "method": "user.create",
            "params": {"email": "a@b", "Password": "hunter2",
                       "nested": [{"apiToken": "t"}, {"keep": 1}]},
            "headers": {"Authorization": "Bearer x"},
        });
        mask(&mut event, &globs);
        assert_eq!(
            event,
            serde_json::json!({
                "method": "user.create",
                "params": {"email": "a@b", "Password": MASKED,
                           "nested": [{"apiToken": MASKED}, {"keep": 1}]},
                "headers": {"Authorization": MASKED},
            })
        );
    }

    #[test]
    fn the_fields_that_make_an_event_are_never_masked() {
        let all = [WildMatch::new("*")];
        let mut event = serde_json::json!({
            "callId": "c1", "method": "vm.start", "type": "pre", "timestamp": 1,
            "params": {"id": "vm-1"}, "userId": "u",
        });
        mask(&mut event, &all);
        assert_eq!(event["params"], MASKED);
        assert_eq!(event["userId"], MASKED);
        let event = crate::event::Event::from_value(event).expect("still an event");
        assert_eq!(event.call_id(), "c1");
    }
}
