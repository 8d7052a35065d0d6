//! A simulation's report, tallied event by event in bounded memory: counts
//! per method (up to [`MAX_METHODS`]), per receiver (up to
//! [`MAX_RECEIVERS`]) and per failure, a few examples, and a histogram of
//! the new version's time.

use crate::activity::{Decided, HookActivity};
use crate::archive::ArchivedEvent;
use crate::event::{Event, Phase};
use crate::hooks::LiveHook;
use crate::run::{CallError, Decision};
use crate::util::MAX_RECEIVERS;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Methods counted one by one; past this many, in [`OTHERS`].
pub const MAX_METHODS: usize = 1000;
/// Where methods and receivers past the caps are counted.
pub const OTHERS: &str = "(others)";

/// What a new version of a hook would have done with the archived events,
/// against what the live version did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SimulationReport {
    /// The new version's name.
    pub hook: String,
    /// The new version's version (hash of its `.wasm` and settings).
    pub version: String,
    /// The live hook it is compared with.
    pub live: String,
    /// The live hook's versions seen in the archive (at most 16).
    pub live_versions: Vec<String>,
    /// Events archived from then (Unix ms) were replayed.
    pub from_ms: u64,
    /// When the last one replayed was archived (Unix ms).
    pub to_ms: Option<u64>,
    /// Archived events read, those that could not be read included.
    pub events: u64,
    /// Archived events that could not be read, or are no longer valid
    /// events (skipped).
    pub unreadable: u64,
    /// Events the new version subscribes to: each was handed to it.
    pub called: u64,
    /// Events the live version was handed.
    pub live_called: u64,
    /// Pre events the new version denies (or would: its mode aside), a
    /// failure under `on_error = "deny"` included.
    pub denied: u64,
    /// Pre events the live version denied (or would have, in monitor
    /// mode), a failure under `on_error = "deny"` included.
    pub live_denied: u64,
    /// Pre events the new version denies that the live one allowed.
    pub newly_denied: Examples,
    /// Pre events the live version denied that the new one allows.
    pub newly_allowed: Examples,
    /// Events on which the new version failed, by kind and method, most
    /// first.
    pub failures: Vec<FailureCount>,
    /// Events on which the live version failed.
    pub live_failures: u64,
    /// Deliveries per receiver, live against new; receivers of either.
    pub receivers: Vec<ReceiverChange>,
    /// Per method and phase, in order.
    pub methods: Vec<MethodSummary>,
    /// The new version's time per event it was handed.
    pub time: Timing,
}

/// A count, with a few of the events counted.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Examples {
    /// How many.
    pub count: u64,
    /// The first few.
    pub examples: Vec<Example>,
}

/// One archived event, as an example of a change.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Example {
    /// Its place in the archive.
    pub seq: u64,
    /// When it was archived (Unix ms).
    pub at_ms: u64,
    /// Its method.
    pub method: String,
    /// Its call id.
    pub call_id: String,
    /// The object it is about: `params.id` (or `vm`, `host`, `sr`, `pool`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Who made the call: `userName`, else `userId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The veto's reason: the new version's for a newly denied event, the
    /// live version's for a newly allowed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Failures of one kind on one method.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FailureCount {
    /// `timeout`, `memory`, `trap`, `error`, `bad-outcome` or `internal`.
    pub kind: String,
    /// The method.
    pub method: String,
    /// How many events.
    pub count: u64,
    /// The first one's message.
    pub message: String,
}

/// Deliveries to one receiver, live against new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ReceiverChange {
    /// `host:port`.
    pub receiver: String,
    /// Deliveries the live version asked for.
    pub live: u64,
    /// Deliveries the new version asks for.
    pub new: u64,
}

/// One method and phase.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct MethodSummary {
    /// The method, or `(others)` past the cap.
    pub method: String,
    /// The phase.
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub phase: String,
    /// Archived events.
    pub events: u64,
    /// Handed to the new version.
    pub called: u64,
    /// Denied by the new version.
    pub denied: u64,
    /// Newly denied.
    pub newly_denied: u64,
    /// Newly allowed.
    pub newly_allowed: u64,
    /// The new version failed.
    pub failures: u64,
    /// Of which timeouts.
    pub timeouts: u64,
}

/// Percentiles of the new version's time per call, in milliseconds (to
/// within 10 %).
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Timing {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Longest.
    pub max_ms: f64,
}

/// One archived event, replayed.
pub(super) struct Replayed {
    pub archived: ArchivedEvent,
    /// `None`: the archived event is not a valid event any more.
    pub event: Option<Event>,
    /// `None`: the new version does not subscribe to it.
    pub result: Option<Result<Decision, CallError>>,
    pub took: Duration,
}

/// The report so far.
pub(super) struct Tally {
    report: SimulationReport,
    deny_on_error: bool,
    examples: usize,
    failures: BTreeMap<(String, String), FailureCount>,
    receivers: BTreeMap<String, ReceiverChange>,
    methods: BTreeMap<(String, String), MethodSummary>,
    time: Histogram,
    unreadable: u64,
}

impl Tally {
    pub(super) fn new(hook: &LiveHook, live: &str, from_ms: u64, examples: usize) -> Tally {
        Tally {
            report: SimulationReport {
                hook: hook.name().to_owned(),
                version: hook.hash.clone(),
                live: live.to_owned(),
                live_versions: Vec::new(),
                from_ms,
                to_ms: None,
                events: 0,
                unreadable: 0,
                called: 0,
                live_called: 0,
                denied: 0,
                live_denied: 0,
                newly_denied: Examples::default(),
                newly_allowed: Examples::default(),
                failures: Vec::new(),
                live_failures: 0,
                receivers: Vec::new(),
                methods: Vec::new(),
                time: Timing::default(),
            },
            deny_on_error: hook.config.on_error == crate::config::OnError::Deny,
            examples,
            failures: BTreeMap::new(),
            receivers: BTreeMap::new(),
            methods: BTreeMap::new(),
            time: Histogram::default(),
            unreadable: 0,
        }
    }

    pub(super) fn add(&mut self, r: Replayed) {
        let a = &r.archived;
        self.report.events += 1;
        self.report.to_ms = Some(a.at_ms);
        if r.event.is_none() {
            self.unreadable += 1;
            return;
        }
        let method_key = if self.methods.len() < MAX_METHODS
            || self
                .methods
                .contains_key(&(a.method.clone(), a.phase.to_string()))
        {
            (a.method.clone(), a.phase.to_string())
        } else {
            (OTHERS.to_owned(), String::new())
        };
        let pre = a.phase == Phase::Pre;
        let live = a.decision_of(&self.report.live);
        let live_denied = pre && live.is_some_and(|l| l.denies);
        if let Some(live) = live {
            self.report.live_called += 1;
            if live.decision == Decided::Failed {
                self.report.live_failures += 1;
            }
            if !live.version.is_empty()
                && self.report.live_versions.len() < 16
                && !self.report.live_versions.contains(&live.version)
            {
                self.report.live_versions.push(live.version.clone());
            }
            for (receiver, n) in &live.receivers {
                self.receiver(receiver).live += *n as u64;
            }
        }
        let mut denied = None;
        let mut failed = None;
        if let Some(result) = &r.result {
            self.report.called += 1;
            self.time.add(r.took);
            match result {
                Ok(decision) => {
                    for d in &decision.deliveries {
                        self.receiver(&d.receiver()).new += 1;
                    }
                    denied = decision.deny.clone().filter(|_| pre);
                }
                Err(e) => {
                    failed = Some(e.kind());
                    if pre && self.deny_on_error {
                        denied = Some(format!("hook failed and its on_error is deny: {e}"));
                    }
                    let key = (e.kind().to_owned(), method_key.0.clone());
                    self.failures
                        .entry(key)
                        .or_insert_with(|| FailureCount {
                            kind: e.kind().to_owned(),
                            method: method_key.0.clone(),
                            count: 0,
                            message: e.to_string(),
                        })
                        .count += 1;
                }
            }
        }
        let newly_denied = denied.is_some() && !live_denied;
        let newly_allowed = live_denied && denied.is_none();
        if denied.is_some() {
            self.report.denied += 1;
        }
        if live_denied {
            self.report.live_denied += 1;
        }
        if newly_denied {
            let example = example(a, denied.clone());
            keep(&mut self.report.newly_denied, example, self.examples);
        }
        if newly_allowed {
            let reason = a.reason_of(&self.report.live);
            keep(
                &mut self.report.newly_allowed,
                example(a, reason),
                self.examples,
            );
        }
        let m = self
            .methods
            .entry(method_key.clone())
            .or_insert_with(|| MethodSummary {
                method: method_key.0.clone(),
                phase: method_key.1.clone(),
                ..MethodSummary::default()
            });
        m.events += 1;
        m.called += r.result.is_some() as u64;
        m.denied += denied.is_some() as u64;
        m.newly_denied += newly_denied as u64;
        m.newly_allowed += newly_allowed as u64;
        m.failures += failed.is_some() as u64;
        m.timeouts += (failed == Some("timeout")) as u64;
    }

    /// An archived record that could not be read at all.
    pub(super) fn unreadable_record(&mut self) {
        self.report.events += 1;
        self.unreadable += 1;
    }

    fn receiver(&mut self, receiver: &str) -> &mut ReceiverChange {
        let name = if self.receivers.len() < MAX_RECEIVERS || self.receivers.contains_key(receiver)
        {
            receiver
        } else {
            OTHERS
        };
        self.receivers
            .entry(name.to_owned())
            .or_insert_with(|| ReceiverChange {
                receiver: name.to_owned(),
                live: 0,
                new: 0,
            })
    }

    pub(super) fn report(mut self) -> SimulationReport {
        let mut failures: Vec<_> = self.failures.into_values().collect();
        failures.sort_by_key(|f| std::cmp::Reverse(f.count));
        self.report.failures = failures;
        self.report.receivers = self.receivers.into_values().collect();
        self.report.methods = self.methods.into_values().collect();
        self.report.time = self.time.timing();
        self.report.unreadable += self.unreadable;
        self.report
    }
}

impl ArchivedEvent {
    /// The reason `hook` gave for its veto (or why it failed, for a
    /// failure that vetoed), if it vetoed.
    fn reason_of(&self, hook: &str) -> Option<String> {
        self.decision_of(hook)
            .filter(|h: &&HookActivity| h.denies)
            .and_then(|h| h.reason.clone())
    }
}

fn keep(examples: &mut Examples, example: Example, max: usize) {
    examples.count += 1;
    if examples.examples.len() < max {
        examples.examples.push(example);
    }
}

fn example(a: &ArchivedEvent, reason: Option<String>) -> Example {
    let text = |v: Option<&serde_json::Value>| {
        v.and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let params = a.event.get("params");
    let object = ["id", "vm", "host", "sr", "pool"]
        .iter()
        .find_map(|k| text(params.and_then(|p| p.get(*k))));
    let user = text(a.event.get("userName")).or_else(|| text(a.event.get("userId")));
    Example {
        seq: a.seq,
        at_ms: a.at_ms,
        method: a.method.clone(),
        call_id: a.call_id.clone(),
        object,
        user,
        reason,
    }
}

/// Times in buckets growing by 2^(1/8) (9 %) from 1 µs: a few hundred
/// counters whatever the number of calls.
#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: Duration,
}

const PER_DOUBLING: f64 = 8.0;

impl Histogram {
    fn add(&mut self, took: Duration) {
        let micros = took.as_secs_f64() * 1e6;
        let bucket = (micros.max(1.0).log2() * PER_DOUBLING).ceil() as usize;
        if self.counts.len() <= bucket {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] += 1;
        self.total += 1;
        self.max = self.max.max(took);
    }

    /// The upper bound of the bucket holding the `q` quantile, in ms.
    fn quantile(&self, q: f64) -> f64 {
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let upper = 2f64.powf(bucket as f64 / PER_DOUBLING) / 1e3;
                return upper.min(self.max.as_secs_f64() * 1e3);
            }
        }
        0.0
    }

    fn timing(&self) -> Timing {
        if self.total == 0 {
            return Timing::default();
        }
        Timing {
            p50_ms: self.quantile(0.5),
            p99_ms: self.quantile(0.99),
            max_ms: self.max.as_secs_f64() * 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.add(Duration::from_millis(ms));
        }
        let t = h.timing();
        assert!((50.0..=55.0).contains(&t.p50_ms), "{t:?}");
        assert!((99.0..=100.0).contains(&t.p99_ms), "{t:?}");
        assert_eq!(t.max_ms, 100.0);
        assert_eq!(Histogram::default().timing().p99_ms, 0.0);
    }
}
