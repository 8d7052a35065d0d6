//! A test file, `NAME.test.toml` (or a `*.toml` in a `NAME.tests/` folder):
//! cases for one hook, each an event and what the hook must do with it.
//!
//! ```toml
//! [[case]]
//! name = "a protected VM cannot be deleted"
//! event = "event.json"                  # a file beside this one, or a table inline
//! set = { "params.id" = "0a9b8c7d-…" }  # fields of the event changed for this case
//! settings = { protected = ["0a9b8c7d-…"] }   # instead of NAME.toml's [settings]
//! expect = { allowed = false, reason = "*protected*" }
//! ```

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A whole test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestFile {
    /// The hook, relative to this file; by default `NAME.wasm` beside it
    /// (beside the `NAME.tests/` folder for a file in one).
    pub(crate) hook: Option<PathBuf>,
    /// Its settings file, relative to this file; by default the hook's
    /// `NAME.toml`, if there is one.
    pub(crate) settings: Option<PathBuf>,
    /// The cases, in order.
    #[serde(rename = "case", default)]
    pub(crate) cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Case {
    /// What it checks, as the report names it.
    pub(crate) name: String,
    /// The event: a JSON file relative to the test file, or the event itself.
    pub(crate) event: EventSource,
    /// Fields set on the event for this case, by dotted path
    /// (`"params.id"`), so that one event file serves many cases.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, toml::Value>,
    /// The hook's `[settings]` for this case, instead of its settings file's.
    pub(crate) settings: Option<toml::Table>,
    /// What the hook must do.
    pub(crate) expect: Expect,
}

/// Where a case's event comes from.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum EventSource {
    /// A JSON file, relative to the test file.
    File(PathBuf),
    /// The event, inline.
    Inline(toml::Table),
}

/// What a case expects. Each field left out is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Expect {
    /// Whether the event matches the hook's subscription; false: the hook
    /// is not called.
    pub(crate) called: Option<bool>,
    /// No veto (`true`), or a veto (`false`).
    pub(crate) allowed: Option<bool>,
    /// The veto's reason, as a glob (`*protected*`).
    pub(crate) reason: Option<String>,
    /// How many deliveries.
    pub(crate) deliveries: Option<usize>,
    /// The deliveries, in order: each one listed is checked, as far as it
    /// says.
    #[serde(default)]
    pub(crate) delivery: Vec<ExpectDelivery>,
    /// The call fails, this way: `timeout`, `memory`, `trap`, `error` (the
    /// hook returned one), `bad-outcome` (beyond the engine's caps),
    /// `internal`, `setup` (its `setup` refused the settings, trapped or
    /// timed out), or `load` (it failed before: unreadable, not a
    /// component, not of the hook world, settings the engine refuses).
    pub(crate) failure: Option<String>,
    /// The failure's message, as a glob.
    pub(crate) message: Option<String>,
}

/// What one delivery must be.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectDelivery {
    /// Its URL, as a glob.
    pub(crate) url: Option<String>,
    /// Headers it must have, each value as a glob.
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    /// Its body holds at least this JSON (objects: these keys with these
    /// values, recursively; arrays and other values: equal).
    pub(crate) body: Option<toml::Value>,
    /// Its body as text, as a glob.
    pub(crate) body_text: Option<String>,
}

/// The failures a case may expect.
pub(crate) const FAILURES: [&str; 8] = [
    "timeout",
    "memory",
    "trap",
    "error",
    "bad-outcome",
    "internal",
    "setup",
    "load",
];

impl TestFile {
    /// Reads and checks `path`: a malformed one is an error naming the file
    /// and, from the TOML parser, the line.
    pub(crate) fn read(path: &Path) -> Result<TestFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read test file {}", path.display()))?;
        let file: TestFile = toml::from_str(&text)
            .with_context(|| format!("test file {} is not valid", path.display()))?;
        if file.cases.is_empty() {
            bail!(
                "test file {} has no cases: add one with [[case]] (name, event, expect)",
                path.display()
            );
        }
        for case in &file.cases {
            if let Some(failure) = &case.expect.failure
                && !FAILURES.contains(&failure.as_str())
            {
                bail!(
                    "test file {}, case {:?}: failure = {failure:?} is not one of {}",
                    path.display(),
                    case.name,
                    FAILURES.join(", ")
                );
            }
        }
        Ok(file)
    }
}

impl Case {
    /// The case's event as JSON: read (relative to `dir`), with its `set`
    /// fields.
    pub(crate) fn event(&self, dir: &Path) -> Result<Value> {
        let mut event = match &self.event {
            EventSource::File(file) => {
                let path = dir.join(file);
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read event file {}", path.display()))?;
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("event file {} is not JSON", path.display()))?
            }
            EventSource::Inline(table) => json_of(&toml::Value::Table(table.clone())),
        };
        for (path, value) in &self.set {
            // `set = { params.id = "x" }` is TOML for `{ params = { id = "x" } }`:
            // it would replace all of `params`.
            if value.is_table() {
                bail!(
                    "case {:?}: set {path:?} is a table, which would replace the whole field; \
                     quote a dotted path instead: set = {{ \"{path}.…\" = … }}",
                    self.name
                );
            }
            set(&mut event, path, json_of(value))
                .with_context(|| format!("case {:?}: set {path:?}", self.name))?;
        }
        Ok(event)
    }
}

/// A TOML value as JSON (TOML dates become strings).
pub(crate) fn json_of(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.iter().map(|(k, v)| (k.clone(), json_of(v))).collect())
        }
    }
}

/// Sets `value` at a dotted `path` of `event`, making the objects on the
/// way.
fn set(event: &mut Value, path: &str, value: Value) -> Result<()> {
    let mut at = event;
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        let Value::Object(object) = at else {
            bail!("{name:?} is inside something that is not an object");
        };
        if names.peek().is_none() {
            object.insert(name.to_owned(), value);
            return Ok(());
        }
        at = object
            .entry(name.to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    bail!("an empty path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_makes_the_objects_on_the_way() {
        let mut event = serde_json::json!({"params": {"id": "a"}});
        set(&mut event, "params.id", "b".into()).unwrap();
        set(&mut event, "params.more.deep", 1.into()).unwrap();
        set(&mut event, "type", "pre".into()).unwrap();
        let expected =
            serde_json::json!({"params": {"id": "b", "more": {"deep": 1}}, "type": "pre"});
        assert_eq!(event, expected);
        assert!(set(&mut event, "type.inner", 1.into()).is_err());
    }
}
