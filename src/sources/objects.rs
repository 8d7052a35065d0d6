//! The last state of each object a source reports, bounded, and what
//! changed between two states: XO's event stream sends an object's new
//! fields only, so the previous values are ours to keep.

use hashlink::LruCache;
use serde_json::{Map, Value};

/// Fields that describe the report, not the object.
const NOT_OBJECT: [&str; 2] = ["$subscription", "href"];

/// An object's fields, as reported (without [`NOT_OBJECT`]).
pub(crate) type Fields = Map<String, Value>;

/// Which object: its collection and id.
pub(crate) type Key = (String, String);

/// The objects' last states, the least recently changed forgotten first.
pub(crate) struct Objects {
    last: LruCache<Key, Fields>,
    /// States hooks were told about, for objects whose later events were
    /// lost (not accepted): a resync compares against these instead, so
    /// the lost transition shows. `None`: the object did not exist to them.
    told: LruCache<Key, Option<Fields>>,
    /// Objects forgotten to stay within the bound, since the start.
    evicted: u64,
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
    pub fn new(max: usize) -> Objects {
        Objects {
            last: LruCache::new(max.max(1)),
            told: LruCache::new(max.max(1)),
            evicted: 0,
        }
    }

    /// Whether every object reported is kept: then one missing from the
    /// objects is new, not forgotten.
    pub fn complete(&self) -> bool {
        self.evicted == 0
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    #[cfg(test)]
    pub fn get(&self, key: &Key) -> Option<&Fields> {
        self.last.peek(key)
    }

    /// Keeps `fields` as the object's state; returns the previous one.
    pub fn set(&mut self, key: Key, fields: Fields) -> Option<Fields> {
        if self.last.len() == self.last.capacity() && !self.last.contains_key(&key) {
            self.evicted += 1;
        }
        self.last.insert(key, fields)
    }

    pub fn remove(&mut self, key: &Key) -> Option<Fields> {
        self.last.remove(key)
    }

    /// Every object of `collection` known, by id.
    pub fn ids(&self, collection: &str) -> Vec<String> {
        self.last
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    /// Remembers what hooks were last told of `key` (its state before an
    /// event that was lost), unless an earlier loss already did.
    pub fn lost(&mut self, key: Key, told: Option<Fields>) {
        if !self.told.contains_key(&key) {
            self.told.insert(key, told);
        }
    }

    /// What hooks last knew of `key`: its state before a lost event, or
    /// the last state kept. `None` inside: it did not exist to them.
    pub fn baseline(&mut self, key: &Key) -> Option<Option<Fields>> {
        match self.told.remove(key) {
            Some(told) => Some(told),
            None => self.last.peek(key).cloned().map(Some),
        }
    }

    /// Objects lost events were about, whatever their state now.
    pub fn lost_keys(&self) -> Vec<Key> {
        self.told.iter().map(|(k, _)| k.clone()).collect()
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
            fields(json!({"id": "a", "power_state": "Halted"}))
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
    fn the_least_recently_changed_go_first_and_a_lost_event_keeps_what_was_told() {
        let mut o = Objects::new(2);
        let key = |id: &str| ("VM".to_string(), id.to_string());
        o.set(key("a"), fields(json!({"id": "a", "s": 1})));
        o.set(key("b"), fields(json!({"id": "b", "s": 1})));
        o.set(key("a"), fields(json!({"id": "a", "s": 2})));
        o.set(key("c"), fields(json!({"id": "c", "s": 1})));
        assert_eq!(o.len(), 2);
        assert!(!o.complete());
        assert!(o.get(&key("b")).is_none(), "b changed least recently");
        assert_eq!(o.ids("VM").len(), 2);

        o.lost(key("a"), Some(fields(json!({"id": "a", "s": 1}))));
        o.lost(key("a"), Some(fields(json!({"id": "a", "s": 2}))));
        o.set(key("a"), fields(json!({"id": "a", "s": 3})));
        assert_eq!(o.lost_keys(), [key("a")]);
        assert_eq!(
            o.baseline(&key("a")).unwrap().unwrap()["s"],
            1,
            "the first loss's"
        );
        assert_eq!(
            o.baseline(&key("a")).unwrap().unwrap()["s"],
            3,
            "then the state kept"
        );
        assert_eq!(o.baseline(&key("zz")), None);
    }
}
