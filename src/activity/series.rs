//! The last hour, per minute, for the console's plots: events accepted,
//! deliveries, failures and dead letters per receiver, each hook's time
//! and each receiver's attempt latency (p50 and p99).
//!
//! Bounded whatever hooks and receivers do: [`MINUTES`] minutes, and per
//! minute at most [`MAX_NAMED`] hooks and receivers each (the rest are
//! counted together as `(others)`); a time is kept as a count in one of
//! [`BUCKETS`] buckets, two per doubling, so a percentile is within 19 %
//! of the truth. Kept in memory: a restart starts it empty, and
//! [`SeriesView::started_ms`] says when it began.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Minutes kept, the current one included.
pub const MINUTES: usize = 60;
/// Hooks, and receivers, kept by name per minute.
pub const MAX_NAMED: usize = 32;
/// What the rest are counted as.
pub const OTHERS: &str = "(others)";
/// Buckets of a time: two per doubling from [`FIRST_US`].
const BUCKETS: usize = 56;
/// The first bucket's upper bound, in µs; 56 buckets reach about 50 min.
/// (A time under it reads as half of it, one past the last as the last.)
const FIRST_US: f64 = 16.0;
const MINUTE_MS: u64 = 60_000;

/// Times, as counts per bucket.
#[derive(Clone)]
struct Sketch {
    counts: [u32; BUCKETS],
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            counts: [0; BUCKETS],
        }
    }
}

impl Sketch {
    fn add(&mut self, took: Duration) {
        let us = took.as_secs_f64() * 1e6;
        let i = if us <= FIRST_US {
            0
        } else {
            ((us / FIRST_US).log2() * 2.0).ceil() as usize
        };
        let i = i.min(BUCKETS - 1);
        self.counts[i] = self.counts[i].saturating_add(1);
    }

    /// The `q` quantile (0 to 1) in ms: the middle of its bucket, on a log
    /// scale; `None` if empty.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let upper = FIRST_US * 2f64.powf(i as f64 / 2.0);
                let middle = if i == 0 {
                    upper / 2.0
                } else {
                    upper / 2f64.powf(0.25)
                };
                return Some(middle / 1e3);
            }
        }
        None
    }
}

#[derive(Default, Clone)]
struct ReceiverMinute {
    delivered: u64,
    failed: u64,
    dead: u64,
    latency: Sketch,
}

#[derive(Default, Clone)]
struct HookMinute {
    calls: u64,
    time: Sketch,
}

#[derive(Clone)]
struct Minute {
    start_ms: u64,
    events: u64,
    receivers: HashMap<String, ReceiverMinute>,
    hooks: HashMap<String, HookMinute>,
}

/// How an attempt ended, for the plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempted {
    /// The receiver took it.
    Delivered,
    /// It failed and will be tried again.
    Failed,
    /// It failed for good: a dead letter.
    Dead,
}

/// The series; see the module's doc.
pub(crate) struct Series {
    started_ms: u64,
    minutes: Mutex<VecDeque<Minute>>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            started_ms: crate::util::now_ms(),
            minutes: Mutex::default(),
        }
    }
}

/// `name`'s entry in `map`, or the shared `(others)` one past [`MAX_NAMED`].
fn named<'a, T: Default>(map: &'a mut HashMap<String, T>, name: &str) -> &'a mut T {
    // No allocation once a name is known (every call but its first in a
    // minute).
    let name = if map.contains_key(name) || map.len() < MAX_NAMED {
        name
    } else {
        OTHERS
    };
    if !map.contains_key(name) {
        map.insert(name.to_owned(), T::default());
    }
    map.get_mut(name).expect("inserted above")
}

impl Series {
    /// The minute of `now`, made current (older ones past the hour go).
    fn at<R>(&self, now: u64, record: impl FnOnce(&mut Minute) -> R) -> R {
        let start_ms = now - now % MINUTE_MS;
        let mut minutes = self.minutes.lock().unwrap();
        if minutes.back().is_none_or(|m| m.start_ms < start_ms) {
            minutes.push_back(Minute {
                start_ms,
                events: 0,
                receivers: HashMap::new(),
                hooks: HashMap::new(),
            });
            while minutes
                .front()
                .is_some_and(|m| m.start_ms + (MINUTES as u64) * MINUTE_MS <= start_ms)
            {
                minutes.pop_front();
            }
        }
        // A clock stepped back: count it in the latest minute.
        record(minutes.back_mut().expect("pushed above"))
    }

    /// An event was accepted.
    pub(crate) fn event(&self) {
        self.at(crate::util::now_ms(), |m| m.events += 1);
    }

    /// A hook took `took` on an event.
    pub(crate) fn hook(&self, hook: &str, took: Duration) {
        self.at(crate::util::now_ms(), |m| {
            let h = named(&mut m.hooks, hook);
            h.calls += 1;
            h.time.add(took);
        });
    }

    /// An attempt to `receiver` ended as `how`, after `took`.
    pub(crate) fn attempt(&self, receiver: &str, how: Attempted, took: Duration) {
        self.at(crate::util::now_ms(), |m| {
            let r = named(&mut m.receivers, receiver);
            match how {
                Attempted::Delivered => r.delivered += 1,
                Attempted::Failed => r.failed += 1,
                Attempted::Dead => {
                    r.failed += 1;
                    r.dead += 1;
                }
            }
            r.latency.add(took);
        });
    }

    /// The last hour as it stands at `now`: every minute since the engine
    /// started (at most [`MINUTES`]), oldest first, empty ones included.
    pub(crate) fn view(&self, now: u64) -> SeriesView {
        let current = now - now % MINUTE_MS;
        // A clock stepped back behind the start shows the current minute.
        let first = (self.started_ms - self.started_ms % MINUTE_MS)
            .max(current.saturating_sub((MINUTES as u64 - 1) * MINUTE_MS))
            .min(current);
        // Copied under the lock and built outside it: recording an event
        // never waits for a view being built.
        let kept: Vec<Minute> = {
            let minutes = self.minutes.lock().unwrap();
            minutes
                .iter()
                .filter(|m| (first..=current).contains(&m.start_ms))
                .cloned()
                .collect()
        };
        let mut out = Vec::with_capacity(MINUTES);
        let mut kept = kept.iter().peekable();
        let mut start_ms = first;
        while start_ms <= current {
            while kept.peek().is_some_and(|m| m.start_ms < start_ms) {
                kept.next();
            }
            let minute = kept.peek().filter(|m| m.start_ms == start_ms);
            // The part of the minute the engine ran: a count over it is a
            // rate, in the minute it started and the current one too.
            let ran = (start_ms + MINUTE_MS)
                .min(now)
                .saturating_sub(start_ms.max(self.started_ms));
            let seconds = (ran as f64 / 1e3).max(1.0);
            out.push(minute_view(start_ms, seconds, minute.copied()));
            start_ms += MINUTE_MS;
        }
        SeriesView {
            started_ms: self.started_ms,
            now_ms: now,
            minutes: out,
        }
    }
}

fn minute_view(start_ms: u64, seconds: f64, minute: Option<&Minute>) -> MinuteView {
    let Some(m) = minute else {
        return MinuteView {
            start_ms,
            seconds,
            events: 0,
            delivered: 0,
            failed: 0,
            dead: 0,
            receivers: Vec::new(),
            hooks: Vec::new(),
        };
    };
    let mut receivers: Vec<ReceiverPoint> = m
        .receivers
        .iter()
        .map(|(name, r)| ReceiverPoint {
            receiver: name.clone(),
            delivered: r.delivered,
            failed: r.failed,
            dead: r.dead,
            p50_ms: r.latency.quantile_ms(0.5),
            p99_ms: r.latency.quantile_ms(0.99),
        })
        .collect();
    receivers.sort_by(|a, b| a.receiver.cmp(&b.receiver));
    let mut hooks: Vec<HookPoint> = m
        .hooks
        .iter()
        .map(|(name, h)| HookPoint {
            hook: name.clone(),
            calls: h.calls,
            p50_ms: h.time.quantile_ms(0.5),
            p99_ms: h.time.quantile_ms(0.99),
        })
        .collect();
    hooks.sort_by(|a, b| a.hook.cmp(&b.hook));
    MinuteView {
        start_ms,
        seconds,
        events: m.events,
        delivered: receivers.iter().map(|r| r.delivered).sum(),
        failed: receivers.iter().map(|r| r.failed).sum(),
        dead: receivers.iter().map(|r| r.dead).sum(),
        receivers,
        hooks,
    }
}

/// The last hour, per minute (`GET /v1/series`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SeriesView {
    /// When the engine started (Unix ms): the series begin there, empty.
    pub started_ms: u64,
    /// When this was read (Unix ms).
    pub now_ms: u64,
    /// Every minute since the engine started, at most the last 60, oldest
    /// first; the last is the current one, under way.
    pub minutes: Vec<MinuteView>,
}

/// One minute.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct MinuteView {
    /// When it began (Unix ms).
    pub start_ms: u64,
    /// How long the engine ran in it: 60, or for the current one, and the
    /// one the engine started in, the seconds so far (at least 1): a count
    /// over this is a rate per second.
    pub seconds: f64,
    /// Events accepted.
    pub events: u64,
    /// Attempts the receivers took.
    pub delivered: u64,
    /// Attempts that failed, dead letters included.
    pub failed: u64,
    /// Attempts after which a delivery was dead.
    pub dead: u64,
    /// Per receiver attempted this minute, by name.
    pub receivers: Vec<ReceiverPoint>,
    /// Per hook called this minute, by name.
    pub hooks: Vec<HookPoint>,
}

/// A receiver's minute.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ReceiverPoint {
    /// The receiver (`host:port`), or `(others)`.
    pub receiver: String,
    /// Attempts it took.
    pub delivered: u64,
    /// Attempts that failed, dead letters included.
    pub failed: u64,
    /// Attempts after which a delivery was dead.
    pub dead: u64,
    /// The median attempt's time, in ms.
    pub p50_ms: Option<f64>,
    /// The 99th percentile attempt's time, in ms.
    pub p99_ms: Option<f64>,
}

/// A hook's minute.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HookPoint {
    /// The hook, or `(others)`.
    pub hook: String,
    /// Events it was called on.
    pub calls: u64,
    /// Its median time on an event, in ms.
    pub p50_ms: Option<f64>,
    /// Its 99th percentile time, in ms.
    pub p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut s = Sketch::default();
        for us in 1..=1000u64 {
            s.add(Duration::from_micros(us * 10));
        }
        let p50 = s.quantile_ms(0.5).unwrap();
        let p99 = s.quantile_ms(0.99).unwrap();
        assert!((5.0 / 1.19..=5.0 * 1.19).contains(&p50), "{p50}");
        assert!((9.9 / 1.19..=9.9 * 1.19).contains(&p99), "{p99}");
        assert_eq!(Sketch::default().quantile_ms(0.5), None);
        let mut huge = Sketch::default();
        huge.add(Duration::from_secs(3600));
        assert!(huge.quantile_ms(0.5).unwrap() > 100_000.0);
    }

    #[test]
    fn the_hour_is_every_minute_since_start_at_most_sixty_and_names_are_bounded() {
        let series = Series {
            started_ms: 0,
            minutes: Mutex::default(),
        };
        let t0 = 1_000 * MINUTE_MS;
        series.at(t0 + 5, |m| m.events += 3);
        for i in 0..(MAX_NAMED + 5) {
            series.at(t0 + 6, |m| named(&mut m.hooks, &format!("h{i}")).calls += 1);
        }
        series.at(t0 + 2 * MINUTE_MS, |m| m.events += 1);
        let view = series.view(t0 + 2 * MINUTE_MS + 30_000);
        // A clock behind the start: the current minute alone, not nothing.
        let late = Series {
            started_ms: t0 + MINUTE_MS,
            minutes: Mutex::default(),
        };
        assert_eq!(late.view(t0).minutes.len(), 1);
        // The minute the engine started in counts from its start.
        let started = Series {
            started_ms: t0 + 50_000,
            minutes: Mutex::default(),
        };
        assert_eq!(started.view(t0 + 55_000).minutes[0].seconds, 5.0);
        assert_eq!(
            started.view(t0 + MINUTE_MS + 1_000).minutes[0].seconds,
            10.0
        );
        assert_eq!(view.minutes.len(), MINUTES);
        let last = &view.minutes[MINUTES - 1];
        assert_eq!((last.events, last.seconds), (1, 30.0));
        let first = &view.minutes[MINUTES - 3];
        assert_eq!(first.events, 3);
        assert_eq!(first.hooks.len(), MAX_NAMED + 1);
        assert_eq!(
            first.hooks.iter().find(|h| h.hook == OTHERS).unwrap().calls,
            5
        );
        assert_eq!(
            view.minutes[MINUTES - 2].events,
            0,
            "an empty minute is shown"
        );
        // An hour on, the old minutes are gone.
        series.at(t0 + 70 * MINUTE_MS, |m| m.events += 1);
        assert_eq!(series.minutes.lock().unwrap().len(), 1);
    }
}
