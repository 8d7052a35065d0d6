//! What the engine has to say about itself: a receiver's circuit opening
//! or closing, a dead letter, a hook failing to load or recovering, a
//! source losing its orchestrator. Raised where it happens (the outbox,
//! the hooks, the sources) without waiting, summarised here, and turned
//! into system events (`wasmhooks.*`, [`Phase::System`]) by
//! `sources::system`, which hooks subscribe to like any other event.
//!
//! Bounded whatever receivers, hooks or sources do. Alerts are grouped by
//! topic (a circuit, dead letters, a hook, a source) and subject (the
//! receiver, hook or source): the first of a group goes out at once, and
//! those that follow within the window are counted and go out as one
//! summary at its end, named after the latest of them (so the last word on
//! a circuit is its state now). A group stays summarised while alerts keep
//! coming, and leads again after a quiet window. So a subject yields at
//! most one event at once and one per window after it: a thousand dead
//! letters to one receiver in a minute are two events, not a thousand.
//! Past [`MAX_SUBJECTS`] groups, new subjects share the subject `*`.
//!
//! [`Phase::System`]: crate::Phase::System

use crate::util::now_ms;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Groups tracked at once; past this, new subjects are merged under `*`.
pub(crate) const MAX_SUBJECTS: usize = 1024;
/// Summaries waiting for the engine to take them; past this (the engine
/// is stuck), the oldest are dropped and counted.
const MAX_READY: usize = 4096;
/// Dead letters' ids kept per summary, to look them up or replay them.
const MAX_SAMPLES: usize = 10;

/// What happened, as the system event's method says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A receiver failed `breaker_failures` times in a row: its
    /// deliveries wait.
    CircuitOpened,
    /// A receiver whose circuit was open took a delivery again.
    CircuitClosed,
    /// A delivery will not be sent again (a dead letter).
    DeliveryDead,
    /// A hook's file failed to load (an older version may keep serving).
    HookLoadFailed,
    /// A hook that had failed to load loads again.
    HookRecovered,
    /// An event source lost its orchestrator, or cannot reach it.
    SourceDisconnected,
    /// An event source that had lost its orchestrator reads it again.
    SourceReconnected,
}

/// Alerts summarised together: one subject's circuit, dead letters,
/// hook, or source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Topic {
    Circuit,
    Dead,
    Hook,
    Source,
}

impl Kind {
    /// The system event's method.
    pub(crate) fn method(self) -> &'static str {
        match self {
            Kind::CircuitOpened => "wasmhooks.receiver.circuit_opened",
            Kind::CircuitClosed => "wasmhooks.receiver.circuit_closed",
            Kind::DeliveryDead => "wasmhooks.delivery.dead",
            Kind::HookLoadFailed => "wasmhooks.hook.load_failed",
            Kind::HookRecovered => "wasmhooks.hook.recovered",
            Kind::SourceDisconnected => "wasmhooks.source.disconnected",
            Kind::SourceReconnected => "wasmhooks.source.reconnected",
        }
    }

    fn topic(self) -> Topic {
        match self {
            Kind::CircuitOpened | Kind::CircuitClosed => Topic::Circuit,
            Kind::DeliveryDead => Topic::Dead,
            Kind::HookLoadFailed | Kind::HookRecovered => Topic::Hook,
            Kind::SourceDisconnected | Kind::SourceReconnected => Topic::Source,
        }
    }

    /// The name of the subject's field in the event's `params`.
    fn subject_field(self) -> &'static str {
        match self.topic() {
            Topic::Circuit | Topic::Dead => "receiver",
            Topic::Hook => "hook",
            Topic::Source => "source",
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone)]
pub(crate) struct Alert {
    pub kind: Kind,
    /// The receiver (`host:port`), hook or source it is about.
    pub subject: String,
    /// What else the event says (an error, a status, a delivery's id…),
    /// merged into its `params`.
    pub detail: Map<String, Value>,
}

impl Alert {
    pub(crate) fn new(kind: Kind, subject: impl Into<String>) -> Alert {
        Alert {
            kind,
            subject: subject.into(),
            detail: Map::new(),
        }
    }

    /// Adds `key` to what the event says.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Alert {
        self.detail.insert(key.to_owned(), value.into());
        self
    }
}

/// What one system event says: a first alert, or a window's summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub kind: Kind,
    /// The system event's `params`: the subject, `count` (alerts this
    /// event stands for), `summary`, `first_ms`, `last_ms`, the latest
    /// alert's detail, and for dead letters some of their `ids`.
    pub params: Map<String, Value>,
}

/// The alerts raised, summarised; see the module's doc.
pub(crate) struct Alerts {
    state: Mutex<State>,
    ready: Notify,
    window_ms: u64,
    enabled: bool,
    /// Windows are timed from here, on the monotonic clock: a wall clock
    /// stepped back must not hold summaries for as long.
    epoch: Instant,
}

#[derive(Default)]
struct State {
    groups: HashMap<(Topic, String), Group>,
    ready: VecDeque<Summary>,
    /// Summaries dropped because the engine did not take them.
    dropped: u64,
}

/// A group within its window: what came after the event that opened it.
struct Group {
    /// When the window ends ([`Alerts::clock`]).
    ends_ms: u64,
    /// Alerts since the last event, and what the latest said.
    count: u64,
    kind: Kind,
    first_ms: u64,
    last_ms: u64,
    detail: Map<String, Value>,
    ids: Vec<Value>,
}

impl Alerts {
    /// Alerts summarised over `window`; `enabled = false` drops every one.
    pub(crate) fn new(window: Duration, enabled: bool) -> Alerts {
        Alerts {
            state: Mutex::default(),
            ready: Notify::new(),
            window_ms: (window.as_millis() as u64).max(1),
            enabled,
            epoch: Instant::now(),
        }
    }

    /// Now on the clock windows are timed by: ms since these alerts began.
    pub(crate) fn clock(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Alerts that go nowhere: for a dry run.
    pub(crate) fn off() -> Alerts {
        Alerts::new(Duration::from_secs(60), false)
    }

    /// Raises `alert`: at once if its group is quiet, else counted in the
    /// group's summary. Never waits.
    pub(crate) fn raise(&self, alert: Alert) {
        if !self.enabled {
            return;
        }
        let (now, clock) = (now_ms(), self.clock());
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let topic = alert.kind.topic();
        let mut key = (topic, alert.subject);
        if !state.groups.contains_key(&key) && state.groups.len() >= MAX_SUBJECTS {
            key.1 = "*".into();
        }
        match state.groups.get_mut(&key) {
            Some(group) => {
                group.count += 1;
                group.kind = alert.kind;
                group.last_ms = now;
                if group.count == 1 {
                    group.first_ms = now;
                }
                if let Some(id) = alert.detail.get("id")
                    && group.ids.len() < MAX_SAMPLES
                {
                    group.ids.push(id.clone());
                }
                group.detail = alert.detail;
            }
            None => {
                let ids: Vec<Value> = alert.detail.get("id").cloned().into_iter().collect();
                let summary = summary(
                    alert.kind,
                    &key.1,
                    1,
                    false,
                    (now, now),
                    &alert.detail,
                    &ids,
                );
                state.groups.insert(
                    key,
                    Group {
                        ends_ms: clock + self.window_ms,
                        count: 0,
                        kind: alert.kind,
                        first_ms: now,
                        last_ms: now,
                        detail: Map::new(),
                        ids: Vec::new(),
                    },
                );
                push(state, summary);
                self.ready.notify_one();
            }
        }
    }

    /// The events due at `now` ([`Alerts::clock`]): first alerts, and the
    /// summaries of the windows that ended; and when the next window ends,
    /// if one is open.
    pub(crate) fn take(&self, now: u64) -> (Vec<Summary>, Option<u64>) {
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let mut due = Vec::new();
        state.groups.retain(|(_, subject), group| {
            if group.ends_ms > now {
                return true;
            }
            if group.count == 0 {
                return false; // a quiet window: the next alert leads again
            }
            due.push(summary(
                group.kind,
                subject,
                group.count,
                true,
                (group.first_ms, group.last_ms),
                &group.detail,
                &group.ids,
            ));
            group.count = 0;
            group.ids.clear();
            group.ends_ms = now + self.window_ms;
            true
        });
        for s in due {
            push(state, s);
        }
        if state.dropped > 0 {
            tracing::warn!(
                dropped = state.dropped,
                "system events were dropped: the engine did not take them in time"
            );
            state.dropped = 0;
        }
        let next = state.groups.values().map(|g| g.ends_ms).min();
        (state.ready.drain(..).collect(), next)
    }

    /// Resolves once an alert is ready to go out at once.
    pub(crate) async fn raised(&self) {
        self.ready.notified().await;
    }
}

fn push(state: &mut State, summary: Summary) {
    if state.ready.len() >= MAX_READY {
        state.ready.pop_front();
        state.dropped += 1;
    }
    state.ready.push_back(summary);
}

fn summary(
    kind: Kind,
    subject: &str,
    count: u64,
    summarised: bool,
    (first_ms, last_ms): (u64, u64),
    detail: &Map<String, Value>,
    ids: &[Value],
) -> Summary {
    let mut params = detail.clone();
    params.remove("id");
    params.insert(kind.subject_field().into(), subject.into());
    params.insert("count".into(), count.into());
    params.insert("summary".into(), summarised.into());
    params.insert("first_ms".into(), first_ms.into());
    params.insert("last_ms".into(), last_ms.into());
    if kind == Kind::DeliveryDead {
        params.insert("ids".into(), ids.to_vec().into());
    }
    Summary { kind, params }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(receiver: &str, id: &str) -> Alert {
        Alert::new(Kind::DeliveryDead, receiver).with("id", id)
    }

    #[test]
    fn a_storm_is_its_first_alert_then_one_summary_per_window() {
        let alerts = Alerts::new(Duration::from_secs(60), true);
        for i in 0..1000 {
            alerts.raise(dead("r:80", &format!("msg_{i}")));
        }
        let (first, next) = alerts.take(alerts.clock());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].params["count"], 1);
        assert_eq!(first[0].params["summary"], false);
        assert_eq!(first[0].params["ids"], serde_json::json!(["msg_0"]));
        let end = next.unwrap();
        assert!(
            alerts.take(end - 1).0.is_empty(),
            "nothing before the window ends"
        );
        let (summaries, next) = alerts.take(end);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].params["count"], 999);
        assert_eq!(summaries[0].params["summary"], true);
        assert_eq!(
            summaries[0].params["ids"].as_array().unwrap().len(),
            MAX_SAMPLES
        );
        // Still in a window: the next one is summarised too.
        alerts.raise(dead("r:80", "msg_x"));
        assert!(alerts.take(end).0.is_empty());
        let (summaries, next) = alerts.take(next.unwrap());
        assert_eq!(summaries[0].params["count"], 1);
        // A quiet window closes the group: the next alert leads again.
        assert!(alerts.take(next.unwrap()).0.is_empty());
        alerts.raise(dead("r:80", "msg_y"));
        assert_eq!(alerts.take(alerts.clock()).0[0].params["summary"], false);
    }

    #[test]
    fn a_summary_is_named_after_the_latest_alert_of_its_topic() {
        let alerts = Alerts::new(Duration::from_secs(60), true);
        alerts.raise(Alert::new(Kind::CircuitOpened, "r:80"));
        alerts.raise(Alert::new(Kind::CircuitClosed, "r:80"));
        alerts.raise(Alert::new(Kind::CircuitOpened, "r:80"));
        alerts.raise(Alert::new(Kind::CircuitClosed, "r:80"));
        let (first, next) = alerts.take(alerts.clock());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, Kind::CircuitOpened);
        assert_eq!(first[0].params["receiver"], "r:80");
        let (last, _) = alerts.take(next.unwrap());
        assert_eq!(last[0].kind, Kind::CircuitClosed, "the circuit's state now");
        assert_eq!(last[0].params["count"], 3);
    }

    #[test]
    fn subjects_past_the_bound_share_one_group_and_nothing_is_kept_when_off() {
        let alerts = Alerts::new(Duration::from_secs(60), true);
        for i in 0..MAX_SUBJECTS + 50 {
            alerts.raise(dead(&format!("r{i}:80"), "msg"));
        }
        let (first, _) = alerts.take(alerts.clock());
        assert_eq!(first.len(), MAX_SUBJECTS + 1);
        assert_eq!(first[MAX_SUBJECTS].params["receiver"], "*");
        let off = Alerts::off();
        off.raise(dead("r:80", "msg"));
        assert_eq!(off.take(off.clock()), (Vec::new(), None));
    }
}
