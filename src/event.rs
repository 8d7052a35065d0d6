//! The orchestrator's events: Xen Orchestra's web-hook payload, validated.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// When an event fires relative to the orchestrator's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the operation runs; hooks may veto it.
    Pre,
    /// After the operation ran.
    Post,
    /// A change the orchestrator reported after the fact, whoever made it
    /// (XO's event stream: `COLLECTION.add|update|remove`, or `resync`).
    /// Like a post event, it is accepted once committed, and vetoes nothing.
    Observed,
    /// What the engine says about itself (`wasmhooks.*`: a receiver's
    /// circuit opened, a dead letter, a hook that failed to load…),
    /// summarised. Only the engine emits these: callers cannot post one.
    System,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
            Phase::Observed => "observed",
            Phase::System => "system",
        })
    }
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The body is not a JSON object.
    #[error("event is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field is missing or has the wrong type or value.
    #[error("event field `{field}`: {problem}")]
    Field {
        /// The field's name as the orchestrator spells it, e.g. `callId`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// A count of milliseconds: a non-negative integer (`146.0` included, as
/// JSON allows) up to `i64::MAX`, as the OpenAPI document's `int64` says.
fn millis(v: &Value) -> Option<u64> {
    let ms = match v.as_u64() {
        Some(ms) => ms,
        None => {
            let f = v.as_f64()?;
            if f.fract() != 0.0 || !(0.0..=i64::MAX as f64).contains(&f) {
                return None;
            }
            f as u64
        }
    };
    (ms <= i64::MAX as u64).then_some(ms)
}

/// Longest `method` and `callId` accepted, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 256;

/// One orchestrator event, checked against the web-hook format.
///
/// The common fields are lifted out; [`Event::payload`] keeps the whole
/// object, unknown fields included, and is what hooks receive.
#[derive(Debug, Clone)]
pub struct Event {
    call_id: String,
    method: String,
    phase: Phase,
    timestamp_ms: u64,
    payload: Arc<str>,
    traceparent: Option<Arc<str>>,
}

impl Event {
    /// Parses and validates an event from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        Event::from_value(serde_json::from_slice(bytes)?)
    }

    /// Validates an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        let Value::Object(mut object) = value else {
            return Err(field("(event)", "expected a JSON object"));
        };
        let call_id = required_str(&object, "callId")?.to_owned();
        let method = required_str(&object, "method")?.to_owned();
        // Orchestrator ids and method names are short; these are kept in
        // indexes and keys, so a long one is refused rather than stored.
        for (name, value) in [("callId", &call_id), ("method", &method)] {
            if value.is_empty() || value.len() > MAX_NAME_BYTES {
                return Err(field(
                    name,
                    format!("must be 1 to {MAX_NAME_BYTES} bytes, got {}", value.len()),
                ));
            }
        }
        let phase = match required_str(&object, "type")? {
            "pre" => Phase::Pre,
            "post" => Phase::Post,
            "observed" => Phase::Observed,
            // Read back from the engine's own journal; refused at the doors.
            "system" => Phase::System,
            other => {
                return Err(field(
                    "type",
                    format!("expected \"pre\", \"post\" or \"observed\", got {other:?}"),
                ));
            }
        };
        let timestamp_ms = match object.get("timestamp") {
            Some(v) => millis(v).ok_or_else(|| {
                field(
                    "timestamp",
                    "expected milliseconds since the Unix epoch as a non-negative integer",
                )
            })?,
            None => return Err(field("timestamp", "missing")),
        };
        // Hooks see integers, even where the sender wrote `146.0`.
        object.insert("timestamp".into(), timestamp_ms.into());
        for name in ["userId", "userName", "userIp"] {
            optional_str(&object, name)?;
        }
        if let Some(v) = object.get("duration").filter(|v| !v.is_null()) {
            let Some(ms) = millis(v) else {
                return Err(field(
                    "duration",
                    "expected milliseconds as a non-negative integer",
                ));
            };
            object.insert("duration".into(), ms.into());
        }
        if let Some(v) = object.get("error")
            && !(v.is_object() || v.is_null())
        {
            return Err(field(
                "error",
                "expected an object with code, message, name and stack",
            ));
        }
        let payload = serde_json::to_string(&object).expect("a JSON map always serializes");
        Ok(Event {
            call_id,
            method,
            phase,
            timestamp_ms,
            payload: payload.into(),
            traceparent: None,
        })
    }

    /// Shared by the pre and the post event of one call.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The API method, e.g. `vm.start`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Pre or post.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Milliseconds since the Unix epoch (the end time for a post event).
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The whole event as compact JSON text, as hooks receive it.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// The caller's W3C trace context (the `traceparent` header of `POST
    /// /v1/events`): with tracing on, the event's spans continue that trace
    /// (see [`crate::trace`]). A malformed one is ignored. Hooks do not see it.
    pub fn with_traceparent(mut self, traceparent: &str) -> Event {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The caller's trace context, if it gave one.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Replaces the `result` field's value with `replacement`, e.g. to keep
    /// a freshly created credential away from hooks.
    pub(crate) fn redact_result(&mut self, replacement: &str) {
        let mut object: Map<String, Value> =
            serde_json::from_str(&self.payload).expect("payload is a JSON object we wrote");
        if let Some(result) = object.get_mut("result") {
            *result = Value::String(replacement.to_owned());
            self.payload = serde_json::to_string(&object)
                .expect("a JSON map always serializes")
                .into();
        }
    }
}

fn field(name: &'static str, problem: impl Into<String>) -> EventError {
    EventError::Field {
        field: name,
        problem: problem.into(),
    }
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, EventError> {
    match optional_str(object, name)? {
        Some("") => Err(field(name, "must not be empty")),
        Some(s) => Ok(s),
        None => Err(field(name, "missing")),
    }
}

fn optional_str<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, EventError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field(name, "expected a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unknown_fields() {
        let e = Event::from_json(
            br#"{"callId":"c","method":"vm.start","type":"pre","timestamp":1,"extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(e.phase(), Phase::Pre);
        assert!(e.payload().contains(r#""extra":{"x":1}"#));
    }

    /// What the OpenAPI document calls an `int64` of milliseconds, as
    /// schemathesis reads it: `146.0` is one (made `146` for hooks),
    /// 2^63 is not.
    #[test]
    fn milliseconds_are_integers_within_int64() {
        let e = Event::from_json(
            br#"{"callId":"c","method":"m","type":"post","timestamp":146.0,"duration":2.0}"#,
        )
        .unwrap();
        assert_eq!(e.timestamp_ms(), 146);
        assert!(e.payload().contains(r#""timestamp":146,"#));
        assert!(e.payload().contains(r#""duration":2"#));
        for bad in [
            r#""timestamp":146.5"#,
            r#""timestamp":9223372036854775808"#,
            r#""timestamp":1,"duration":9223372036854775808"#,
            r#""timestamp":1,"duration":1e300"#,
        ] {
            let body = format!(r#"{{"callId":"c","method":"m","type":"post",{bad}}}"#);
            assert!(
                matches!(
                    Event::from_json(body.as_bytes()),
                    Err(EventError::Field { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_the_bad_field() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"method":"m","type":"pre","timestamp":1}"#, "callId"),
            (
                br#"{"callId":"","method":"m","type":"pre","timestamp":1}"#,
                "callId",
            ),
            (
                br#"{"callId":"c","method":"m","type":"during","timestamp":1}"#,
                "type",
            ),
            (
                br#"{"callId":"c","method":"m","type":"pre","timestamp":-5}"#,
                "timestamp",
            ),
            (
                br#"{"callId":"c","method":7,"type":"pre","timestamp":1}"#,
                "method",
            ),
            (
                br#"{"callId":"c","method":"m","type":"post","timestamp":1,"error":"x"}"#,
                "error",
            ),
        ];
        for (body, expected) in cases {
            match Event::from_json(body) {
                Err(EventError::Field { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        assert!(matches!(Event::from_json(b"{"), Err(EventError::Json(_))));
        // A long method name is refused, not kept in indexes and keys.
        let long = format!(
            r#"{{"callId":"c","method":"{}","type":"pre","timestamp":1}}"#,
            "m".repeat(MAX_NAME_BYTES + 1)
        );
        assert!(matches!(
            Event::from_json(long.as_bytes()),
            Err(EventError::Field {
                field: "method",
                ..
            })
        ));
    }

    #[test]
    fn redacts_result() {
        let mut e =
            Event::from_json(br#"{"callId":"c","method":"token.create","type":"post","timestamp":1,"result":"secret"}"#)
                .unwrap();
        e.redact_result("* obfuscated *");
        assert!(!e.payload().contains("secret"));
    }
}
