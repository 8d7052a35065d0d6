//! A pre event's verdict: the first veto wins, a failed hook counts as its
//! `on_error` says, and monitor-mode hooks only say what they would do.

use super::{CallError, Decision};
use crate::activity::{Allowed, Decided, HookActivity, MAX_TEXT};
use crate::config::{HookMode, OnError};
use crate::delivery::Delivery;
use crate::hooks::{Hooks, LiveHook};
use crate::util::truncate;
use serde::Serialize;
use std::sync::Arc;

/// The answer to a pre event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Verdict {
    /// Whether the operation may go ahead.
    pub allowed: bool,
    /// The hook that vetoed it.
    pub denied_by: Option<String>,
    /// The hook's reason.
    pub reason: Option<String>,
    /// Vetoes of hooks in monitor mode, which did not stop the operation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_deny: Vec<WouldDeny>,
    /// Hooks that failed on this event (their `on_error` was applied).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<HookFailure>,
}

/// The veto a hook in monitor mode would have made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WouldDeny {
    /// The hook.
    pub hook: String,
    /// Its reason.
    pub reason: String,
}

/// A hook that failed on an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HookFailure {
    /// The hook.
    pub hook: String,
    /// `timeout`, `memory`, `trap`, `error`, `bad-outcome`, `internal`,
    /// `delivery` (a `wait` delivery failed or is late) or `queue` (a
    /// `wait` hook's deliveries could not be queued).
    pub kind: String,
    /// What happened.
    pub message: String,
    /// For a hook stopped at its deadline: the running time it was
    /// charged, in milliseconds (see [`CallError::Timeout`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran_ms: Option<u64>,
}

/// What a pre event's hooks decided, before their deliveries are queued.
pub(crate) struct PreDecisions {
    pub verdict: Verdict,
    /// Deliveries of hooks without `wait`.
    pub queued: Vec<Delivery>,
    /// Deliveries of each `wait` hook.
    pub waiting: Vec<(Arc<LiveHook>, Vec<Delivery>)>,
}

/// Turns a pre event's decisions into a verdict: the first veto (in hook
/// name order) wins; a failed hook counts as its `on_error` says.
pub(crate) fn decide(hooks: &Hooks, results: Vec<Result<Decision, CallError>>) -> PreDecisions {
    let mut decided = PreDecisions {
        verdict: Verdict::allowing(),
        queued: Vec::new(),
        waiting: Vec::new(),
    };
    for (hook, result) in hooks.iter().zip(results) {
        let deny = match result {
            Ok(decision) => {
                if hook.config.wait {
                    decided.waiting.push((hook.clone(), decision.deliveries));
                } else {
                    decided.queued.extend(decision.deliveries);
                }
                decision.deny
            }
            Err(e) => decided.verdict.fail(hook, HookFailure::of_call(hook, &e)),
        };
        decided.verdict.deny(hook, deny);
    }
    decided
}

impl HookFailure {
    /// `hook` failed this way.
    pub(crate) fn new(hook: &LiveHook, kind: &str, message: String) -> HookFailure {
        HookFailure {
            hook: hook.name().to_owned(),
            kind: kind.to_owned(),
            message,
            ran_ms: None,
        }
    }

    /// `hook`'s call failed with `e`.
    fn of_call(hook: &LiveHook, e: &CallError) -> HookFailure {
        let ran_ms = match e {
            CallError::Timeout { ran, .. } => Some(ran.as_millis() as u64),
            _ => None,
        };
        HookFailure {
            ran_ms,
            ..HookFailure::new(hook, e.kind(), e.to_string())
        }
    }
}

impl Verdict {
    /// No veto and no failure: where every pre event's verdict starts.
    pub(crate) fn allowing() -> Verdict {
        Verdict {
            allowed: true,
            denied_by: None,
            reason: None,
            would_deny: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Records that `hook` failed; returns the veto its `on_error` makes of it.
    pub(crate) fn fail(&mut self, hook: &LiveHook, failure: HookFailure) -> Option<String> {
        let deny = failure_veto(hook.config.on_error, &failure.message);
        self.failures.push(failure);
        deny
    }

    /// Applies `hook`'s veto (the first enforced one wins), or records it
    /// in `would_deny` for a hook in monitor mode. Counted either way.
    pub(crate) fn deny(&mut self, hook: &LiveHook, reason: Option<String>) {
        let Some(reason) = reason else { return };
        if hook.config.mode == HookMode::Monitor {
            hook.stats.would_deny.inc();
            tracing::info!(hook = hook.name(), "would deny (monitor mode): {reason}");
        } else {
            hook.stats.denials.inc();
        }
        self.veto(hook.name(), hook.config.mode, reason);
    }

    /// The rule: a hook in monitor mode's veto is recorded, not enforced;
    /// the first enforced veto decides, and later ones change nothing.
    fn veto(&mut self, hook: &str, mode: HookMode, reason: String) {
        if mode == HookMode::Monitor {
            self.would_deny.push(WouldDeny {
                hook: hook.to_owned(),
                reason,
            });
        } else if self.allowed {
            self.allowed = false;
            self.denied_by = Some(hook.to_owned());
            self.reason = Some(reason);
        }
    }
}

/// The veto a hook's failure makes under its `on_error`.
fn failure_veto(on_error: OnError, message: &str) -> Option<String> {
    (on_error == OnError::Deny).then(|| format!("hook failed and its on_error is deny: {message}"))
}

/// What each of `hooks` decided, from the results of their calls.
pub(crate) fn activity_of(
    hooks: &Hooks,
    results: &[Result<Decision, CallError>],
    pre: bool,
) -> Vec<HookActivity> {
    hooks
        .iter()
        .zip(results)
        .map(|(hook, result)| {
            let text = |s: &str| Some(truncate(s, MAX_TEXT).to_owned());
            let (decision, deliveries, reason) = match result {
                Ok(d) => match &d.deny {
                    Some(reason) if hook.config.mode == HookMode::Monitor => {
                        (Decided::WouldDeny, d.deliveries.len(), text(reason))
                    }
                    Some(reason) => (Decided::Vetoed, d.deliveries.len(), text(reason)),
                    None if d.deliveries.is_empty() => (Decided::Skipped, 0, None),
                    None => (Decided::Queued, d.deliveries.len(), None),
                },
                Err(e) => (Decided::Failed, 0, text(&format!("{}: {e}", e.kind()))),
            };
            let mut receivers = std::collections::BTreeMap::new();
            if let Ok(d) = result {
                for delivery in &d.deliveries {
                    *receivers.entry(delivery.receiver()).or_default() += 1;
                }
            }
            let denies = match result {
                Ok(d) => d.deny.is_some(),
                Err(_) => hook.config.on_error == OnError::Deny,
            };
            HookActivity {
                hook: hook.name().to_owned(),
                version: hook.hash.clone(),
                decision,
                deliveries,
                receivers,
                denies: pre && denies,
                reason,
            }
        })
        .collect()
}

/// `decided`, with the hooks that failed after their call (a `wait` hook
/// whose delivery failed, or could not be queued) shown as failed, as the
/// verdict has them.
pub(crate) fn with_failures(
    mut decided: Vec<HookActivity>,
    verdict: &Verdict,
) -> Vec<HookActivity> {
    for failure in &verdict.failures {
        if let Some(h) = decided
            .iter_mut()
            .find(|h| h.hook == failure.hook && h.decision != Decided::Failed)
        {
            h.decision = Decided::Failed;
            // Its failure counts as a veto if its `on_error` made one.
            h.denies |= verdict.denied_by.as_deref() == Some(&h.hook)
                || verdict.would_deny.iter().any(|w| w.hook == h.hook);
            let reason = format!("{}: {}", failure.kind, failure.message);
            h.reason = Some(truncate(&reason, MAX_TEXT).to_owned());
        }
    }
    decided
}

impl Verdict {
    /// The verdict as the activity log keeps it.
    pub(crate) fn allowed(&self) -> Allowed {
        Allowed {
            allowed: self.allowed,
            denied_by: self.denied_by.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_enforced_veto_decides_and_monitor_vetoes_are_only_recorded() {
        let mut v = Verdict::allowing();
        v.veto("a-watch", HookMode::Monitor, "would stop it".into());
        assert!(v.allowed, "a monitor veto is not enforced");
        v.veto("b-gate", HookMode::Enforce, "protected".into());
        v.veto("c-gate", HookMode::Enforce, "also".into());
        assert!(!v.allowed);
        assert_eq!(v.denied_by.as_deref(), Some("b-gate"));
        assert_eq!(v.reason.as_deref(), Some("protected"));
        assert_eq!(v.would_deny.len(), 1);
        assert_eq!(v.would_deny[0].hook, "a-watch");
    }

    #[test]
    fn a_failure_vetoes_only_under_on_error_deny() {
        assert_eq!(failure_veto(OnError::Allow, "trap"), None);
        let veto = failure_veto(OnError::Deny, "trap").unwrap();
        assert!(
            veto.contains("on_error is deny") && veto.ends_with("trap"),
            "{veto}"
        );
    }
}
