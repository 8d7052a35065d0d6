//! What a case expected against what the hook did: each difference a line
//! of the report, `expected …, got …`.

use super::file::{Expect, ExpectDelivery, json_of};
use serde_json::Value;
use wasmhooks::{DryDelivery, DryRun, Error};
use wildmatch::WildMatch;

/// How the hook's call ended, as a case sees it.
pub(crate) type Ran = Result<DryRun, Error>;

/// The differences between `expect` and `ran`; none: the case passes.
pub(crate) fn differences(expect: &Expect, ran: &Ran) -> Vec<String> {
    let mut out = Vec::new();
    let run = match (ran, &expect.failure) {
        (Err(e), None) => {
            out.push(format!("expected the hook to run, got a failure: {e}"));
            return out;
        }
        (Err(e), Some(failure)) => {
            let kind = kind_of(e);
            if kind != failure.as_str() {
                out.push(format!(
                    "expected failure {failure}, got failure {kind}: {e}"
                ));
            }
            if let Some(pattern) = &expect.message
                && !WildMatch::new(pattern).matches(&e.to_string())
            {
                out.push(format!(
                    "expected a failure message like {pattern:?}, got {:?}",
                    e.to_string()
                ));
            }
            return out;
        }
        (Ok(run), Some(failure)) => {
            out.push(format!("expected failure {failure}, got {}", summary(run)));
            return out;
        }
        (Ok(run), None) => run,
    };
    if let Some(called) = expect.called
        && called != run.matches
    {
        out.push(match called {
            true => {
                "expected the hook to be called, but the event is not in its subscription".into()
            }
            false => format!("expected the hook not to be called, got {}", summary(run)),
        });
    }
    // What the hook answered cannot be checked on an event it was not given:
    // a case about its answer would otherwise pass on a broken subscription.
    let about_answer = expect.allowed.is_some()
        || expect.reason.is_some()
        || expect.deliveries.is_some()
        || !expect.delivery.is_empty();
    if !run.matches && about_answer {
        if expect.called.is_none() {
            out.push(
                "expected an answer from the hook, but it was not called (the event is not \
                 in its subscription)"
                    .into(),
            );
        }
        return out;
    }
    let (deny, deliveries) = match &run.outcome {
        Some(o) => (o.deny.as_deref(), &o.deliveries[..]),
        None => (None, &[][..]),
    };
    if let Some(allowed) = expect.allowed
        && allowed != deny.is_none()
    {
        out.push(match deny {
            Some(reason) => format!("expected allowed, got denied: {reason:?}"),
            None => "expected denied, got allowed".into(),
        });
    }
    if let Some(pattern) = &expect.reason {
        match deny {
            Some(reason) if WildMatch::new(pattern).matches(reason) => {}
            Some(reason) => out.push(format!(
                "expected a reason like {pattern:?}, got {reason:?}"
            )),
            None => out.push(format!("expected a reason like {pattern:?}, got no veto")),
        }
    }
    if let Some(n) = expect.deliveries
        && n != deliveries.len()
    {
        out.push(format!("expected {n} deliveries, got {}", deliveries.len()));
    }
    for (i, wanted) in expect.delivery.iter().enumerate() {
        match deliveries.get(i) {
            Some(got) => out.extend(
                delivery_differences(wanted, got)
                    .into_iter()
                    .map(|d| format!("delivery {}: {d}", i + 1)),
            ),
            None => out.push(format!(
                "expected a delivery {}, got {} deliveries",
                i + 1,
                deliveries.len()
            )),
        }
    }
    out
}

fn delivery_differences(wanted: &ExpectDelivery, got: &DryDelivery) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(pattern) = &wanted.url
        && !WildMatch::new(pattern).matches(&got.url)
    {
        out.push(format!(
            "expected a URL like {pattern:?}, got {:?}",
            got.url
        ));
    }
    for (name, pattern) in &wanted.headers {
        let value = got
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        match value {
            Some(v) if WildMatch::new(pattern).matches(v) => {}
            Some(v) => out.push(format!("expected header {name}: {pattern:?}, got {v:?}")),
            None => out.push(format!("expected header {name}: {pattern:?}, got none")),
        }
    }
    if let Some(body) = &wanted.body {
        let wanted = json_of(body);
        if let Some(at) = not_within(&wanted, &got.body, String::new()) {
            out.push(format!(
                "expected the body to hold {wanted}, but at {at} it has {}",
                pointer(&got.body, &at).map_or("nothing".into(), Value::to_string)
            ));
        }
    }
    if let Some(pattern) = &wanted.body_text {
        let text = match &got.body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !WildMatch::new(pattern).matches(&text) {
            out.push(format!("expected a body like {pattern:?}, got {text:?}"));
        }
    }
    out
}

/// Where `wanted` is not within `got` (a JSON pointer), if anywhere: an
/// object's keys are a subset, anything else is equal.
fn not_within(wanted: &Value, got: &Value, at: String) -> Option<String> {
    match (wanted, got) {
        (Value::Object(wanted), Value::Object(got)) => wanted.iter().find_map(|(key, value)| {
            let at = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
            match got.get(key) {
                Some(got) => not_within(value, got, at),
                None => Some(at),
            }
        }),
        _ if wanted == got => None,
        _ => Some(if at.is_empty() { "/".into() } else { at }),
    }
}

fn pointer<'a>(value: &'a Value, at: &str) -> Option<&'a Value> {
    match at {
        "/" => Some(value),
        at => value.pointer(at),
    }
}

/// A failure's word, as a case names it: how the call failed; `setup`
/// when the hook's `setup` failed (refused its settings, trapped, timed
/// out); `load` when it failed before (unreadable, not a component, not of
/// the hook world, settings the engine refuses).
fn kind_of(e: &Error) -> &'static str {
    match e {
        Error::Call(call) => call.kind(),
        Error::Load(load) if load.stage == wasmhooks::Stage::Setup => "setup",
        _ => "load",
    }
}

/// What the hook did, in a few words.
fn summary(run: &DryRun) -> String {
    match &run.outcome {
        None => "not called (the event is not in its subscription)".into(),
        Some(o) => match &o.deny {
            Some(reason) => format!("a veto: {reason:?}"),
            None => match o.deliveries.len() {
                1 => "allowed, with 1 delivery".into(),
                n => format!("allowed, with {n} deliveries"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_holds_a_subset() {
        let got = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}});
        assert_eq!(
            not_within(&json!({"b": {"d": "x"}}), &got, String::new()),
            None
        );
        assert_eq!(not_within(&json!({}), &got, String::new()), None);
        assert_eq!(
            not_within(&json!({"b": {"c": [1]}}), &got, String::new()).as_deref(),
            Some("/b/c")
        );
        assert_eq!(
            not_within(&json!({"e": 1}), &got, String::new()).as_deref(),
            Some("/e")
        );
        assert_eq!(
            not_within(&json!(2), &json!(1), String::new()).as_deref(),
            Some("/")
        );
    }
}
