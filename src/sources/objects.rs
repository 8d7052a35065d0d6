//! The last state of each object a source reports, bounded, what hooks
//! were last told of it, and what changed between two states: XO's event
//! stream sends an object's new fields only, so the previous values are
//! ours to keep.

use hashlink::LruCache;
use serde_json::{Map, Value};

/// Fields that describe the report, not the object.
const NOT_OBJECT: [&str; 2] = ["$subscription", "href"];

/// An object's fields, as reported (without [`NOT_OBJECT`]).
pub(crate) type Fields = Map<String, Value>;

/// Which object: its collection and id.
pub(crate) type Key = (String, String);

/// What is known of an object's state at some point.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Known {
    /// It did not exist.
    Absent,
    /// It may or may not have existed: past `max_objects`, it was not kept.
    Unknown,
    /// It had these fields.
    State(Fields),
}

/// The objects' last states, the least recently changed forgotten first,
/// and what hooks were told of objects whose events were lost.
pub(crate) struct Objects {
    max: usize,
    last: LruCache<Key, Fields>,
    /// For objects whose events were lost (not accepted): what hooks knew
    /// before the earliest lost one, and its sequence number. A resync
    /// compares against this instead, so the lost transition shows.
    told: LruCache<Key, (u64, Known)>,
    /// Whether every existing object is kept: then one missing from `last`
    /// does not exist. Set by a listing that fits, lost at the first object
    /// forgotten.
    complete: bool,
}

/// What changed between two states of an object.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Change {
    /// The fields that changed (or appeared, or went), sorted.
    pub changed: Vec<String>,
    /// Their previous values (`null` for a field that was not there).
    pub previous: Fields,
}

impl Objects {
    pub(super) fn new(max: usize) -> Objects {
        let max = max.max(1);
        Objects {
            max,
            last: LruCache::new(max),
            told: LruCache::new(max),
            complete: false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.last.len()
    }

    /// See [`Objects::complete`]'s field.
    pub(super) fn complete(&self) -> bool {
        self.complete
    }

    /// After a listing of `total` objects: whether they all fit.
    pub(super) fn listed(&mut self, total: usize) {
        self.complete = total <= self.max;
    }

    /// What is known of `key` now.
    pub(super) fn known(&self, key: &Key) -> Known {
        match self.last.peek(key) {
            Some(fields) => Known::State(fields.clone()),
            None if self.complete => Known::Absent,
            None => Known::Unknown,
        }
    }

    /// Keeps `fields` as the object's state; returns what was known before.
    pub(super) fn set(&mut self, key: Key, fields: Fields) -> Known {
        let before = self.known(&key);
        if !self.last.contains_key(&key) && self.last.len() == self.max {
            // One is forgotten to make room.
            self.complete = false;
        }
        self.last.insert(key, fields);
        before
    }

    /// Forgets the object; returns what was known before.
    pub(super) fn remove(&mut self, key: &Key) -> Known {
        let before = self.known(key);
        self.last.remove(key);
        before
    }

    /// Every object of `collection` kept, by id.
    pub(super) fn ids(&self, collection: &str) -> Vec<String> {
        self.last
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    /// Remembers what hooks knew of `key` before the lost event number
    /// `seq`, unless an earlier lost event's is kept already. Forgetting
    /// one (past `max_objects`) makes the set incomplete.
    pub(super) fn lost(&mut self, key: Key, seq: u64, before: Known) {
        match self.told.get(&key) {
            Some((kept, _)) if *kept <= seq => {}
            _ => {
                if !self.told.contains_key(&key) && self.told.len() == self.max {
                    self.complete = false;
                }
                self.told.insert(key, (seq, before));
            }
        }
    }

    /// What hooks last knew of `key`: its state before its earliest lost
    /// event, or what is known now.
    pub(super) fn baseline(&mut self, key: &Key) -> Known {
        match self.told.remove(key) {
            Some((_, told)) => told,
            None => self.known(key),
        }
    }

    /// Objects of `collection` lost events were about, whatever their state now.
    pub(super) fn lost_ids(&self, collection: &str) -> Vec<String> {
        self.told
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((_, id), _)| id.clone())
            .collect()
    }
}

/// The object's fields from a report (an SSE event's data or a listing's
/// entry), and its id; `None` if it has no string `id`.
pub(crate) fn fields_of(report: Value) -> Option<(String, Fields)> {
    let Value::Object(mut fields) = report else {
        return None;
    };
    for key in NOT_OBJECT {
        fields.remove(key);
    }
    let id = fields.get("id")?.as_str()?.to_owned();
    Some((id, fields))
}

/// What changed from `before` to `after`; empty if nothing did.
pub(crate) fn change(before: &Fields, after: &Fields) -> Change {
    let mut changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect();
    changed.sort();
    changed.dedup();
    let previous = changed
        .iter()
        .map(|k| (k.clone(), before.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    Change { changed, previous }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        fields_of(v).unwrap().1
    }

    fn key(id: &str) -> Key {
        ("VM".to_string(), id.to_string())
    }

    #[test]
    fn a_change_names_the_fields_and_their_previous_values() {
        let before = fields(json!({"id": "a", "power_state": "Halted", "name_label": "db"}));
        let after = fields(
            json!({"$subscription": "VM", "id": "a", "power_state": "Running", "name_label": "db", "href": "/x"}),
        );
        let c = change(&before, &after);
        assert_eq!(c.changed, ["power_state"]);
        assert_eq!(
            c.previous,
            fields(json!({"id": "x", "power_state": "Halted"}))
                .into_iter()
                .filter(|(k, _)| k != "id")
                .collect()
        );
        assert_eq!(change(&after, &after), Change::default());
        let gone = change(
            &before,
            &fields(json!({"id": "a", "power_state": "Halted"})),
        );
        assert_eq!(gone.changed, ["name_label"]);
        assert_eq!(gone.previous["name_label"], "db");
        assert!(fields_of(json!({"name": "no id"})).is_none());
    }

    #[test]
    fn a_missing_object_is_absent_only_while_every_object_is_kept() {
        let mut o = Objects::new(2);
        assert_eq!(o.known(&key("a")), Known::Unknown, "nothing listed yet");
        o.listed(1);
        assert_eq!(o.set(key("a"), fields(json!({"id": "a"}))), Known::Absent);
        assert_eq!(o.set(key("b"), fields(json!({"id": "b"}))), Known::Absent);
        assert!(o.complete());
        // A third: one is forgotten, so the set is no longer complete.
        assert_eq!(o.set(key("c"), fields(json!({"id": "c"}))), Known::Absent);
        assert!(!o.complete());
        assert_eq!(
            o.known(&key("a")),
            Known::Unknown,
            "a changed least recently"
        );
        assert!(matches!(o.known(&key("c")), Known::State(_)));
        assert_eq!(o.ids("VM").len(), 2);
        o.listed(2);
        assert!(o.complete(), "a listing that fits makes it whole again");
    }

    #[test]
    fn the_earliest_lost_event_gives_the_baseline() {
        let mut o = Objects::new(10);
        o.listed(0);
        o.set(key("a"), fields(json!({"id": "a", "s": 3})));
        o.lost(
            key("a"),
            7,
            Known::State(fields(json!({"id": "a", "s": 2}))),
        );
        o.lost(
            key("a"),
            5,
            Known::State(fields(json!({"id": "a", "s": 1}))),
        );
        o.lost(
            key("a"),
            9,
            Known::State(fields(json!({"id": "a", "s": 9}))),
        );
        assert_eq!(o.lost_ids("VM"), ["a"]);
        let Known::State(told) = o.baseline(&key("a")) else {
            panic!("a state")
        };
        assert_eq!(told["s"], 1, "event 5's");
        let Known::State(now) = o.baseline(&key("a")) else {
            panic!("a state")
        };
        assert_eq!(now["s"], 3, "then the state kept");
        assert_eq!(o.baseline(&key("zz")), Known::Absent);
    }
}
