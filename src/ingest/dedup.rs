//! Recognising an event sent again: its key and id, and the pre verdicts
//! seen lately.

use super::Ingest;
use crate::delivery::{new_uid, uid_of};
use crate::event::Event;
use crate::run::Verdict;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Pre verdicts remembered for recognising a pre event sent again; past
/// this, the oldest are forgotten first.
const MAX_RECENT_VERDICTS: usize = 65_536;

/// The pre events seen lately, by key, and their keys oldest first.
#[derive(Default)]
pub(crate) struct RecentVerdicts {
    by_key: HashMap<String, Recent>,
    order: VecDeque<(Instant, String)>,
}

/// A pre event seen lately: its verdict, once known.
pub(crate) struct Recent {
    at: Instant,
    verdict: watch::Receiver<Option<Verdict>>,
}

impl Ingest {
    /// The key that recognises an event sent again, and the id its
    /// deliveries' ids derive from.
    pub(super) fn identify(&self, event: &Event) -> (Option<String>, String) {
        identify(event, self.dedup_window, crate::util::now_ms())
    }

    /// Remembers that the pre event `key` is being decided. `Err` with the
    /// first copy's verdict if it was seen within the window.
    pub(super) fn remember(
        &self,
        key: &str,
    ) -> Result<watch::Sender<Option<Verdict>>, watch::Receiver<Option<Verdict>>> {
        self.recent
            .lock()
            .unwrap()
            .remember(key, self.dedup_window, Instant::now())
    }
}

/// The key of `event` (method, call id and phase; `None` if the window is
/// zero: nothing is recognised) and the id its deliveries' ids derive from,
/// at `now_ms`.
fn identify(event: &Event, window: Duration, now_ms: u64) -> (Option<String>, String) {
    if window.is_zero() {
        return (None, new_uid());
    }
    let (method, call) = (event.method(), event.call_id());
    // Lengths first: no method and call id pair can spell another's key.
    let key = format!(
        "{}:{method}{}:{call}{}",
        method.len(),
        call.len(),
        event.phase()
    );
    // The id is the key's within one window-long period: copies that slip
    // past recognition still share `webhook-id`s, and the same event sent
    // again much later (a new acceptance) gets new ones.
    let period = now_ms / (window.as_millis() as u64).max(1);
    let uid = uid_of(&format!("{key}@{period}"));
    (Some(key), uid)
}

impl RecentVerdicts {
    /// Remembers at `now` that the pre event `key` is being decided. `Err`
    /// with the first copy's verdict if that was seen within `window` and
    /// has one, or is still deciding.
    fn remember(
        &mut self,
        key: &str,
        window: Duration,
        now: Instant,
    ) -> Result<watch::Sender<Option<Verdict>>, watch::Receiver<Option<Verdict>>> {
        // Forget the expired, and the oldest past the bound.
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window && self.order.len() < MAX_RECENT_VERDICTS
            {
                break;
            }
            let (at, key) = self.order.pop_front().expect("not empty");
            if self.by_key.get(&key).is_some_and(|r| r.at == at) {
                self.by_key.remove(&key);
            }
        }
        // A first copy whose task died without a verdict does not count.
        if let Some(seen) = self.by_key.get(key)
            && now.saturating_duration_since(seen.at) < window
            && (seen.verdict.borrow().is_some() || seen.verdict.has_changed().is_ok())
        {
            return Err(seen.verdict.clone());
        }
        let (tx, rx) = watch::channel(None);
        self.by_key.insert(
            key.to_owned(),
            Recent {
                at: now,
                verdict: rx,
            },
        );
        self.order.push_back((now, key.to_owned()));
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(call: &str, phase: &str) -> Event {
        Event::from_json(
            format!(r#"{{"callId":"{call}","method":"vm.start","type":"{phase}","timestamp":1}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_copy_has_the_key_and_ids_of_the_first_within_a_period() {
        let window = Duration::from_secs(60);
        let (key, uid) = identify(&event("c1", "pre"), window, 1_000);
        assert_eq!(
            identify(&event("c1", "pre"), window, 59_999),
            (key.clone(), uid.clone())
        );
        // Another phase or call is another event.
        assert_ne!(identify(&event("c1", "post"), window, 1_000).0, key);
        assert_ne!(identify(&event("c2", "pre"), window, 1_000).0, key);
        // The same event much later: recognised by key, new ids.
        let later = identify(&event("c1", "pre"), window, 60_000);
        assert_eq!(later.0, key);
        assert_ne!(later.1, uid);
        // A zero window recognises nothing: fresh ids every time.
        let (none, a) = identify(&event("c1", "pre"), Duration::ZERO, 1_000);
        let (_, b) = identify(&event("c1", "pre"), Duration::ZERO, 1_000);
        assert!(none.is_none());
        assert_ne!(a, b);
    }

    #[test]
    fn a_pre_copy_gets_the_first_verdict_within_the_window_only() {
        let window = Duration::from_secs(10);
        let mut recent = RecentVerdicts::default();
        let t0 = Instant::now();
        let first = recent.remember("k", window, t0).expect("first copy");
        // Still deciding: a copy waits for the first one's verdict.
        let mut copy = recent
            .remember("k", window, t0 + Duration::from_secs(1))
            .unwrap_err();
        first.send_replace(Some(Verdict::allowing()));
        assert!(copy.borrow_and_update().as_ref().unwrap().allowed);
        // Past the window: decided anew.
        assert!(recent.remember("k", window, t0 + window).is_ok());
    }

    #[test]
    fn a_first_copy_that_died_without_a_verdict_does_not_count() {
        let window = Duration::from_secs(10);
        let mut recent = RecentVerdicts::default();
        let t0 = Instant::now();
        drop(recent.remember("k", window, t0).unwrap());
        assert!(
            recent
                .remember("k", window, t0 + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn at_most_max_recent_verdicts_are_kept() {
        let window = Duration::from_secs(3600);
        let mut recent = RecentVerdicts::default();
        let t0 = Instant::now();
        let mut senders = Vec::new();
        for i in 0..MAX_RECENT_VERDICTS + 10 {
            senders.push(recent.remember(&format!("k{i}"), window, t0).unwrap());
        }
        assert_eq!(recent.order.len(), MAX_RECENT_VERDICTS);
        assert_eq!(recent.by_key.len(), MAX_RECENT_VERDICTS);
        // The oldest went first: k0 is decided anew.
        assert!(recent.remember("k0", window, t0).is_ok());
    }
}
