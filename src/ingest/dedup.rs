//! Recognising an event sent again: its key and id, and the pre verdicts
//! seen lately.

use super::Ingest;
use crate::delivery::{new_uid, uid_of};
use crate::event::Event;
use crate::run::Verdict;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;
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
        if self.dedup_window.is_zero() {
            return (None, new_uid());
        }
        let (method, call) = (event.method(), event.call_id());
        let key = format!(
            "{}:{method}{}:{call}{}",
            method.len(),
            call.len(),
            event.phase()
        );
        // The id is the key's within one window-long period: copies that
        // slip past recognition still share `webhook-id`s, and the same
        // event sent again much later (a new acceptance) gets new ones.
        let period = crate::util::now_ms() / (self.dedup_window.as_millis() as u64).max(1);
        let uid = uid_of(&format!("{key}@{period}"));
        (Some(key), uid)
    }

    /// Remembers that the pre event `key` is being decided. `Err` with the
    /// first copy's verdict if it was seen within the window.
    pub(super) fn remember(
        &self,
        key: &str,
    ) -> Result<watch::Sender<Option<Verdict>>, watch::Receiver<Option<Verdict>>> {
        let mut recent = self.recent.lock().unwrap();
        let recent = &mut *recent;
        // Forget the expired, and the oldest past the bound.
        while let Some((at, _)) = recent.order.front() {
            if at.elapsed() < self.dedup_window && recent.order.len() < MAX_RECENT_VERDICTS {
                break;
            }
            let (at, key) = recent.order.pop_front().expect("not empty");
            if recent.by_key.get(&key).is_some_and(|r| r.at == at) {
                recent.by_key.remove(&key);
            }
        }
        // A first copy whose task died without a verdict does not count.
        if let Some(seen) = recent.by_key.get(key)
            && seen.at.elapsed() < self.dedup_window
            && (seen.verdict.borrow().is_some() || seen.verdict.has_changed().is_ok())
        {
            return Err(seen.verdict.clone());
        }
        let (tx, rx) = watch::channel(None);
        let at = Instant::now();
        recent
            .by_key
            .insert(key.to_owned(), Recent { at, verdict: rx });
        recent.order.push_back((at, key.to_owned()));
        Ok(tx)
    }
}
