//! Prometheus metrics, served at `GET /metrics`.
//!
//! Per hook: calls, errors, timeouts, vetoes (enforced, and would-be in
//! monitor mode), loads, refused versions, and a duration histogram. Per
//! receiver (host:port): deliveries, failed attempts, retries, dead
//! letters, and, read from the queue at scrape time, queue depth and the
//! age of the oldest pending delivery.

use crate::activity::Attempted;
use crate::queue::{Depth, Stalls};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Distinct receivers tracked at most; the rest are counted under
/// `receiver="other"`.
use crate::util::MAX_RECEIVERS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabel {
    receiver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// An observed event: its source, collection (from the source's settings,
/// so bounded) and action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceEventLabel {
    source: String,
    collection: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceFailureLabel {
    source: String,
    kind: String,
}

fn duration_histogram() -> Histogram {
    // 10 µs to about 10 s.
    Histogram::new(exponential_buckets(0.000_01, 4.0, 11))
}

/// One hook's counters. They survive reloads, and are the metrics
/// themselves: the status API reads the same numbers.
#[derive(Debug, Clone)]
pub(crate) struct HookStats {
    pub calls: Counter,
    pub errors: Counter,
    pub timeouts: Counter,
    /// Pre events the hook vetoed (enforced).
    pub denials: Counter,
    /// Pre events a hook in monitor mode would have vetoed.
    pub would_deny: Counter,
    pub loads: Counter,
    pub load_failures: Counter,
    pub duration: Histogram,
}

impl Default for HookStats {
    fn default() -> Self {
        HookStats {
            calls: Counter::default(),
            errors: Counter::default(),
            timeouts: Counter::default(),
            denials: Counter::default(),
            would_deny: Counter::default(),
            loads: Counter::default(),
            load_failures: Counter::default(),
            duration: duration_histogram(),
        }
    }
}

/// The engine's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    calls: Family<HookLabel, Counter>,
    errors: Family<HookLabel, Counter>,
    timeouts: Family<HookLabel, Counter>,
    denials: Family<HookLabel, Counter>,
    would_deny: Family<HookLabel, Counter>,
    loads: Family<HookLabel, Counter>,
    load_failures: Family<HookLabel, Counter>,
    duration: Family<HookLabel, Histogram, fn() -> Histogram>,
    warm: Family<HookLabel, Gauge>,
    delivered: Family<ReceiverLabel, Counter>,
    failed: Family<ReceiverLabel, Counter>,
    retried: Family<ReceiverLabel, Counter>,
    dead: Family<ReceiverLabel, Counter>,
    depth: Family<ReceiverLabel, Gauge>,
    in_flight: Family<ReceiverLabel, Gauge>,
    circuit_open: Family<ReceiverLabel, Gauge>,
    oldest: Family<ReceiverLabel, Gauge<f64, AtomicU64>>,
    receivers: Mutex<HashSet<String>>,
    source_up: Family<SourceLabel, Gauge>,
    source_events: Family<SourceEventLabel, Counter>,
    source_failures: Family<SourceFailureLabel, Counter>,
    source_resyncs: Family<SourceLabel, Counter>,
    /// Seconds requests have been waiting for the queue's backend now.
    queue_waiting: Gauge<f64, AtomicU64>,
    /// Requests that waited for it.
    queue_waits: Counter,
    /// Commits kept on the engine's disk until the queue takes them: now,
    /// and ever.
    queue_kept_now: Gauge,
    queue_kept: Counter,
    stalls_lock: Mutex<()>,
    /// Events written to the archive.
    pub archived: Counter,
    /// Events not archived: its writer was behind, or the write failed.
    pub archive_lost: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("wasmhooks"),
            calls: Family::default(),
            errors: Family::default(),
            timeouts: Family::default(),
            denials: Family::default(),
            would_deny: Family::default(),
            loads: Family::default(),
            load_failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            warm: Family::default(),
            delivered: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead: Family::default(),
            depth: Family::default(),
            in_flight: Family::default(),
            circuit_open: Family::default(),
            oldest: Family::default(),
            receivers: Mutex::default(),
            source_up: Family::default(),
            source_events: Family::default(),
            source_failures: Family::default(),
            source_resyncs: Family::default(),
            queue_waiting: Gauge::default(),
            queue_waits: Counter::default(),
            queue_kept_now: Gauge::default(),
            queue_kept: Counter::default(),
            stalls_lock: Mutex::default(),
            archived: Counter::default(),
            archive_lost: Counter::default(),
        };
        let r = &mut m.registry;
        r.register("hook_calls", "Events handed to a hook", m.calls.clone());
        r.register(
            "hook_errors",
            "Events a hook failed on (trap, timeout, memory cap, error, bad outcome)",
            m.errors.clone(),
        );
        r.register(
            "hook_timeouts",
            "Events a hook did not finish within its deadline",
            m.timeouts.clone(),
        );
        r.register(
            "hook_denials",
            "Pre events a hook vetoed (its on_error included)",
            m.denials.clone(),
        );
        r.register(
            "hook_would_deny",
            "Pre events a hook in monitor mode would have vetoed",
            m.would_deny.clone(),
        );
        r.register("hook_loads", "Versions of a hook loaded", m.loads.clone());
        r.register(
            "hook_load_failures",
            "Versions of a hook refused (the last good one kept serving)",
            m.load_failures.clone(),
        );
        r.register(
            "hook_duration_seconds",
            "Time to run a hook on one event, instantiation included",
            m.duration.clone(),
        );
        r.register(
            "hook_warm_instances",
            "Warm instances idle, for a hook with [reuse]",
            m.warm.clone(),
        );
        r.register(
            "deliveries",
            "Deliveries a receiver accepted (2xx)",
            m.delivered.clone(),
        );
        r.register(
            "delivery_failures",
            "Delivery attempts that failed",
            m.failed.clone(),
        );
        r.register(
            "delivery_retries",
            "Failed attempts scheduled for a retry",
            m.retried.clone(),
        );
        r.register(
            "dead_letters",
            "Deliveries that failed for good",
            m.dead.clone(),
        );
        r.register(
            "queue_depth",
            "Deliveries pending per receiver",
            m.depth.clone(),
        );
        r.register(
            "deliveries_in_flight",
            "Delivery attempts in flight per receiver (each holds one of its slots)",
            m.in_flight.clone(),
        );
        r.register(
            "receiver_circuit_open",
            "1 while a receiver's circuit is open (its deliveries wait after repeated failures)",
            m.circuit_open.clone(),
        );
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest pending delivery per receiver",
            m.oldest.clone(),
        );
        r.register(
            "source_up",
            "1 while a source reads its stream live (0 while it connects, lists or retries)",
            m.source_up.clone(),
        );
        r.register(
            "source_events",
            "Observed events a source emitted, by collection and action",
            m.source_events.clone(),
        );
        r.register(
            "source_failures",
            "Why a source stopped reading and reconnected (refused: the token; overflow: events lost, read again)",
            m.source_failures.clone(),
        );
        r.register(
            "source_resyncs",
            "Times a source compared a fresh listing after a gap",
            m.source_resyncs.clone(),
        );
        r.register(
            "queue_waiting_seconds",
            "How long requests to the queue have been waiting for it now (NATS JetStream \
             electing a leader); 0 when none waits",
            m.queue_waiting.clone(),
        );
        r.register(
            "queue_waits",
            "Requests to the queue that waited for it (NATS JetStream electing a leader) \
             instead of failing",
            m.queue_waits.clone(),
        );
        r.register(
            "queue_kept_locally_now",
            "Accepted events kept on this engine's disk now, until NATS JetStream has a \
             leader again (queue.nats.spill_after_ms)",
            m.queue_kept_now.clone(),
        );
        r.register(
            "queue_kept_locally",
            "Accepted events kept on this engine's disk while NATS JetStream had no leader, \
             then forwarded",
            m.queue_kept.clone(),
        );
        r.register(
            "archive_events",
            "Events written to the archive ([archive])",
            m.archived.clone(),
        );
        r.register(
            "archive_lost",
            "Events not archived: the archive's writer was behind, or its write failed",
            m.archive_lost.clone(),
        );
        m
    }
}

impl Metrics {
    pub(crate) fn source_up(&self, source: &str, up: bool) {
        self.source_up
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .set(up as i64);
    }

    pub(crate) fn source_event(&self, source: &str, collection: &str, action: &str) {
        self.source_events
            .get_or_create(&SourceEventLabel {
                source: source.into(),
                collection: collection.into(),
                action: action.into(),
            })
            .inc();
    }

    pub(crate) fn source_failure(&self, source: &str, kind: &str) {
        self.source_failures
            .get_or_create(&SourceFailureLabel {
                source: source.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub(crate) fn source_resync(&self, source: &str) {
        self.source_resyncs
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc();
    }

    /// The counters of the hook called `name`, shared with the metrics.
    pub(crate) fn hook(&self, name: &str) -> HookStats {
        let label = HookLabel {
            hook: name.to_owned(),
        };
        HookStats {
            calls: self.calls.get_or_create_owned(&label),
            errors: self.errors.get_or_create_owned(&label),
            timeouts: self.timeouts.get_or_create_owned(&label),
            denials: self.denials.get_or_create_owned(&label),
            would_deny: self.would_deny.get_or_create_owned(&label),
            loads: self.loads.get_or_create_owned(&label),
            load_failures: self.load_failures.get_or_create_owned(&label),
            duration: self.duration.get_or_create_owned(&label),
        }
    }

    fn receiver_label(&self, receiver: &str) -> ReceiverLabel {
        let mut known = self.receivers.lock().unwrap();
        let receiver = if known.contains(receiver) || known.len() < MAX_RECEIVERS {
            known.insert(receiver.to_owned());
            receiver.to_owned()
        } else {
            "other".to_owned()
        };
        ReceiverLabel { receiver }
    }

    /// Counts one delivery attempt to `receiver`.
    pub(crate) fn attempt(&self, receiver: &str, result: Attempted) {
        let label = self.receiver_label(receiver);
        match result {
            Attempted::Delivered => {
                self.delivered.get_or_create(&label).inc();
            }
            Attempted::Failed => {
                self.failed.get_or_create(&label).inc();
                self.retried.get_or_create(&label).inc();
            }
            Attempted::Dead => {
                self.failed.get_or_create(&label).inc();
                self.dead.get_or_create(&label).inc();
            }
        }
    }

    /// Sets how the queue's backend keeps requests waiting.
    pub(crate) fn stalls(&self, stalls: Stalls) {
        self.queue_waiting
            .set(stalls.waiting.map_or(0.0, |w| w.as_secs_f64()));
        // One scrape at a time, or two would both add the same requests.
        let _one = self.stalls_lock.lock().unwrap();
        let more = stalls.requests.saturating_sub(self.queue_waits.get());
        self.queue_waits.inc_by(more);
        self.queue_kept_now.set(stalls.kept_now as i64);
        let more = stalls.kept.saturating_sub(self.queue_kept.get());
        self.queue_kept.inc_by(more);
    }

    /// Sets the queue gauges from `depth`.
    fn set_depth(&self, depth: &HashMap<String, Depth>, now_ms: u64) {
        self.depth.clear();
        self.oldest.clear();
        // Receivers past the label cap (hooks pick URLs) add up under "other".
        let mut capped: HashMap<ReceiverLabel, (u64, Option<u64>)> = HashMap::new();
        for (receiver, d) in depth {
            let (pending, oldest) = capped.entry(self.receiver_label(receiver)).or_default();
            *pending += d.pending;
            *oldest = match (*oldest, d.oldest_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for (label, (pending, oldest)) in capped {
            self.depth.get_or_create(&label).set(pending as i64);
            if let Some(oldest) = oldest {
                let age = now_ms.saturating_sub(oldest) as f64 / 1000.0;
                self.oldest.get_or_create(&label).set(age);
            }
        }
    }

    /// The text exposition, with queue gauges set from `depth` (as they
    /// were at the last scrape if the queue could not say) and the
    /// warm-instance gauges from `warm` (hook, idle instances).
    pub(crate) fn encode(
        &self,
        depth: Option<&HashMap<String, Depth>>,
        warm: &[(String, usize)],
        receivers: &[crate::delivery::ReceiverView],
        now_ms: u64,
    ) -> String {
        self.in_flight.clear();
        self.circuit_open.clear();
        for r in receivers {
            let label = self.receiver_label(&r.name);
            self.in_flight
                .get_or_create(&label)
                .inc_by(r.in_flight as i64);
            if r.circuit == crate::delivery::Circuit::Open {
                self.circuit_open.get_or_create(&label).set(1);
            }
        }
        self.warm.clear();
        for (hook, idle) in warm {
            let label = HookLabel { hook: hook.clone() };
            self.warm.get_or_create(&label).set(*idle as i64);
        }
        if let Some(depth) = depth {
            self.set_depth(depth, now_ms);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hooks choose URLs: past `MAX_RECEIVERS`, queue gauges add up under
    /// "other" instead of one series per receiver (before: unbounded).
    #[test]
    fn queue_gauges_are_capped_by_receivers() {
        let metrics = Metrics::default();
        let depth: HashMap<String, Depth> = (0..MAX_RECEIVERS + 100)
            .map(|i| {
                let d = Depth {
                    pending: 1,
                    dead: 0,
                    oldest_ms: Some(1_000),
                };
                (format!("r{i}.test:80"), d)
            })
            .collect();
        let text = metrics.encode(Some(&depth), &[], &[], 2_000);
        let series = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(series("wasmhooks_queue_depth{"), MAX_RECEIVERS + 1);
        assert_eq!(
            series("wasmhooks_oldest_pending_age_seconds{"),
            MAX_RECEIVERS + 1
        );
        assert!(
            text.contains("wasmhooks_queue_depth{receiver=\"other\"} 100"),
            "the rest add up under other"
        );
    }
}
