//! The recent past, for operators: the last events accepted and what each
//! hook decided on them, each receiver's last failed attempts (this file),
//! and the last hour per minute for the console's plots (`series.rs`).
//!
//! Kept in memory, bounded whatever hooks and receivers do, and lost at
//! restart: it is for looking at (the console, `GET /v1/activity`), not a
//! record. The queue and the metrics are the record.

mod series;

pub(crate) use series::{Attempted, Series};
pub use series::{HookPoint, MAX_NAMED, MINUTES, MinuteView, OTHERS, ReceiverPoint, SeriesView};

use crate::event::{Event, Phase};
use crate::util::truncate;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

/// Events kept in the activity log; the oldest go first.
pub const MAX_EVENTS: usize = 200;
/// Hooks listed per event in the activity log; the rest are counted in
/// [`EventActivity::more_hooks`].
pub const MAX_HOOKS_PER_EVENT: usize = 32;
/// Receivers whose recent failures are kept; past this, the one that
/// failed least recently is forgotten.
pub use crate::util::MAX_RECEIVERS;
/// Failed attempts kept per receiver, newest first.
pub const FAILURES_PER_RECEIVER: usize = 5;
/// Longest reason or error message kept, in bytes.
pub(crate) const MAX_TEXT: usize = 512;

/// A pre event's verdict, as the log keeps it.
#[derive(Clone)]
pub(crate) struct Allowed {
    pub allowed: bool,
    pub denied_by: Option<String>,
}

/// One accepted event and what its hooks decided.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct EventActivity {
    /// Increases by one with each event recorded since the engine started.
    pub seq: u64,
    /// When its hooks had decided (Unix ms).
    pub at_ms: u64,
    /// The event's method, e.g. `vm.start`.
    pub method: String,
    /// The event's call id.
    pub call_id: String,
    /// The event's phase.
    pub phase: Phase,
    /// For a pre event: whether the operation was allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    /// For a pre event that was vetoed: the hook that did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// What each subscribed hook decided, in hook name order (at most
    /// [`MAX_HOOKS_PER_EVENT`]); empty if no hook subscribed to the event.
    pub hooks: Vec<HookActivity>,
    /// Subscribed hooks not listed in `hooks`.
    pub more_hooks: usize,
}

/// What one hook decided on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HookActivity {
    /// The hook.
    pub hook: String,
    /// The hook's version: the hash of its `.wasm` and `NAME.toml`.
    #[serde(default)]
    pub version: String,
    /// What it decided.
    pub decision: Decided,
    /// Deliveries it asked for (queued).
    pub deliveries: usize,
    /// Those deliveries per receiver (`host:port`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub receivers: BTreeMap<String, usize>,
    /// For a pre event: whether what it did counts as a veto, its mode
    /// aside: it vetoed, would have (monitor mode), or failed with
    /// `on_error = "deny"`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub denies: bool,
    /// The veto's reason, or why the hook failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A hook's decision on one event, in a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Decided {
    /// No delivery and no veto.
    Skipped,
    /// One or more deliveries, no veto.
    Queued,
    /// Vetoed the pre event (possibly with deliveries too).
    Vetoed,
    /// Would have vetoed it, in monitor mode.
    WouldDeny,
    /// Failed (trap, timeout, memory, bad outcome…); `reason` says how.
    Failed,
}

/// A failed attempt to deliver to a receiver.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ReceiverFailure {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The delivery's `webhook-id`.
    pub id: String,
    /// The hook that asked for it.
    pub hook: String,
    /// The receiver's status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the attempt failed.
    pub error: String,
    /// Whether the delivery became a dead letter (else it is retried).
    pub dead: bool,
}

/// The bounded logs.
#[derive(Default)]
pub(crate) struct Activity {
    events: Mutex<Events>,
    failures: Mutex<HashMap<String, VecDeque<ReceiverFailure>>>,
    series: Series,
}

#[derive(Default)]
struct Events {
    next: u64,
    recent: VecDeque<EventActivity>,
}

impl Activity {
    /// Records that `event` was accepted and what its `hooks` decided;
    /// `verdict` for a pre event.
    pub(crate) fn event(&self, event: &Event, hooks: Vec<HookActivity>, verdict: Option<Allowed>) {
        self.series.event();
        let more_hooks = hooks.len().saturating_sub(MAX_HOOKS_PER_EVENT);
        let mut hooks = hooks;
        hooks.truncate(MAX_HOOKS_PER_EVENT);
        let mut events = self.events.lock().unwrap();
        events.next += 1;
        let entry = EventActivity {
            seq: events.next,
            at_ms: crate::util::now_ms(),
            method: event.method().to_owned(),
            call_id: event.call_id().to_owned(),
            phase: event.phase(),
            allowed: verdict.as_ref().map(|v| v.allowed),
            denied_by: verdict.and_then(|v| v.denied_by),
            hooks,
            more_hooks,
        };
        if events.recent.len() == MAX_EVENTS {
            events.recent.pop_front();
        }
        events.recent.push_back(entry);
    }

    /// The last hour, per minute, for plots.
    pub(crate) fn series(&self) -> &Series {
        &self.series
    }

    /// The last `limit` events, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<EventActivity> {
        let events = self.events.lock().unwrap();
        events.recent.iter().rev().take(limit).cloned().collect()
    }

    /// Records a failed attempt to deliver to `receiver`.
    pub(crate) fn failure(&self, receiver: &str, failure: ReceiverFailure) {
        let failure = ReceiverFailure {
            error: truncate(&failure.error, MAX_TEXT).to_owned(),
            ..failure
        };
        let mut all = self.failures.lock().unwrap();
        if !all.contains_key(receiver) && all.len() >= MAX_RECEIVERS {
            let stalest = all
                .iter()
                .min_by_key(|(_, f)| f.front().map_or(0, |f| f.at_ms))
                .map(|(name, _)| name.clone());
            if let Some(name) = stalest {
                all.remove(&name);
            }
        }
        let list = all.entry(receiver.to_owned()).or_default();
        list.push_front(failure);
        list.truncate(FAILURES_PER_RECEIVER);
    }

    /// Every receiver's recent failures, newest first.
    pub(crate) fn failures(&self) -> HashMap<String, Vec<ReceiverFailure>> {
        let all = self.failures.lock().unwrap();
        all.iter()
            .map(|(name, list)| (name.clone(), list.iter().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(at_ms: u64) -> ReceiverFailure {
        ReceiverFailure {
            at_ms,
            id: format!("msg_{at_ms}"),
            hook: "h".into(),
            status: Some(503),
            error: "x".repeat(10 * MAX_TEXT),
            dead: false,
        }
    }

    #[test]
    fn failures_are_bounded_per_receiver_and_in_receivers() {
        let activity = Activity::default();
        for i in 0..(MAX_RECEIVERS as u64 + 10) {
            for j in 0..(FAILURES_PER_RECEIVER as u64 + 3) {
                activity.failure(&format!("r{i}:80"), failure(i * 100 + j));
            }
        }
        let all = activity.failures();
        assert_eq!(all.len(), MAX_RECEIVERS);
        // The receivers that failed least recently were forgotten.
        assert!(!all.contains_key("r0:80") && all.contains_key("r1033:80"));
        let newest = &all["r1033:80"];
        assert_eq!(newest.len(), FAILURES_PER_RECEIVER);
        assert_eq!(
            newest[0].at_ms,
            1033 * 100 + FAILURES_PER_RECEIVER as u64 + 2
        );
        assert_eq!(newest[0].error.len(), MAX_TEXT);
    }

    #[test]
    fn events_are_bounded_and_newest_first() {
        let activity = Activity::default();
        for i in 0..(MAX_EVENTS + 5) {
            let event = Event::from_json(
                format!(r#"{{"callId":"c{i}","method":"vm.start","type":"post","timestamp":1}}"#)
                    .as_bytes(),
            )
            .unwrap();
            activity.event(&event, Vec::new(), None);
        }
        let recent = activity.recent(usize::MAX);
        assert_eq!(recent.len(), MAX_EVENTS);
        assert_eq!(recent[0].call_id, format!("c{}", MAX_EVENTS + 4));
        assert_eq!(recent[0].seq, MAX_EVENTS as u64 + 5);
        assert_eq!(activity.recent(3).len(), 3);
    }
}
