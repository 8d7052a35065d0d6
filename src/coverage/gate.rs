//! What one gate covers: its subscription matched against the reports.

use super::{Coverage, EntryPoint, MAX_LISTED, status};
use crate::config::{HookMode, OnError};
use crate::sandbox::Subscription;
use serde::Serialize;
use std::time::Instant;
use wildmatch::WildMatch;

/// What one gate (a hook subscribed to pre events) covers.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct GateCoverage {
    /// One line for the operator, e.g. `guarded on 4 entry points
    /// (jsonrpc, rest); NOT on 2: job backupNg.runJob, xapi *`.
    pub summary: String,
    /// Entry points matching its subscription whose calls wait for its
    /// verdict, from the fresh reports of loaded plugins (at most
    /// [`MAX_LISTED`]).
    pub guarded: Vec<GuardedAt>,
    /// How many there are in all.
    pub guarded_total: usize,
    /// Entry points matching its subscription that do not wait for it,
    /// each with why (at most [`MAX_LISTED`]).
    pub unguarded: Vec<GuardedAt>,
    /// How many there are in all.
    pub unguarded_total: usize,
    /// What else weakens the gate: no report, a stale one, an unloaded or
    /// failing-open plugin, monitor mode.
    pub warnings: Vec<String>,
}

/// An entry point, and who reported it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct GuardedAt {
    /// The reporter.
    pub reporter: String,
    /// Which way in (see [`EntryPoint::entry`]).
    pub entry: String,
    /// The method its calls are events of, or `*`.
    pub method: String,
    /// Where, for an entry point with routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Whether a veto there stops the operation.
    pub guarded: bool,
    /// Why it is not guarded, or anything else the operator should know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Coverage {
    /// What a gate with `subscription` and `mode` covers.
    pub(crate) fn of_gate(
        &self,
        subscription: &Subscription,
        mode: HookMode,
        on_error: OnError,
    ) -> GateCoverage {
        self.of_gate_at(subscription, mode, on_error, Instant::now())
    }

    pub(super) fn of_gate_at(
        &self,
        subscription: &Subscription,
        mode: HookMode,
        on_error: OnError,
        now: Instant,
    ) -> GateCoverage {
        let globs: Vec<WildMatch> = subscription
            .methods
            .iter()
            .map(|m| WildMatch::new(m))
            .collect();
        let matches =
            |e: &EntryPoint| e.method == "*" || globs.iter().any(|g| g.matches(&e.method));
        let mut guarded = Vec::new();
        let mut unguarded = Vec::new();
        let mut warnings = Vec::new();
        let mut guarded_total = 0;
        let mut unguarded_total = 0;
        // Every entry point kind it is guarded on, listed or not.
        let mut kinds: Vec<&str> = Vec::new();
        let reports = self.reports.lock().unwrap();
        let mut names: Vec<&String> = reports.keys().collect();
        names.sort();
        let mut holding = 0;
        // Reporters whose entry points are not counted, and why.
        let mut unknown: Vec<String> = Vec::new();
        for name in names {
            let stored = &reports[name];
            let s = status(name, stored, now);
            if !s.fresh {
                unknown.push(format!("{name} (stale)"));
                warnings.push(format!(
                    "{name} ({}) last reported {} s ago, past its {} s: what it guards now is unknown, so nothing of it is shown as guarded",
                    s.plugin,
                    s.age_ms / 1000,
                    stored.report.ttl_secs
                ));
                continue;
            }
            if !s.loaded {
                unknown.push(format!("{name} (unloaded)"));
                warnings.push(format!(
                    "{name} ({}) is unloaded: nothing there waits for this gate",
                    s.plugin
                ));
                continue;
            }
            holding += 1;
            if !s.fail_closed {
                warnings.push(format!(
                    "{name} fails open: while wasmhooks cannot be reached, its guarded calls go ahead without a verdict"
                ));
            }
            for entry in stored.report.entries.iter().filter(|e| matches(e)) {
                let (list, total) = if entry.guarded {
                    (&mut guarded, &mut guarded_total)
                } else {
                    (&mut unguarded, &mut unguarded_total)
                };
                *total += 1;
                if entry.guarded && !kinds.contains(&entry.entry.as_str()) {
                    kinds.push(&entry.entry);
                }
                if list.len() < MAX_LISTED {
                    let note = entry.note.clone().or_else(|| {
                        (!entry.guarded).then(|| {
                            "the plugin does not wait for a verdict there: its guard setting leaves this method out"
                                .into()
                        })
                    });
                    list.push(GuardedAt {
                        reporter: name.clone(),
                        entry: entry.entry.clone(),
                        method: entry.method.clone(),
                        route: entry.route.clone(),
                        guarded: entry.guarded,
                        note,
                    });
                }
            }
        }
        if holding == 0 {
            warnings.insert(
                0,
                "no orchestrator plugin holds a current report: no call into the orchestrator is known to wait for this gate; only callers that send pre events to wasmhooks themselves are gated"
                    .into(),
            );
        }
        if mode == HookMode::Monitor {
            warnings.push("monitor mode: its vetoes are reported, not enforced".into());
        }
        if on_error == OnError::Allow {
            warnings.push(
                "when it fails (a trap, its deadline), the call goes ahead: on_error = \"allow\" (\"deny\" refuses it instead)"
                    .into(),
            );
        }
        kinds.sort_unstable();
        let mut summary = summary(&kinds, guarded_total, &unguarded, unguarded_total, holding);
        if holding != 0 && !unknown.is_empty() {
            summary.push_str(&format!("; NOT known for {}", unknown.join(", ")));
        }
        GateCoverage {
            summary,
            guarded,
            guarded_total,
            unguarded,
            unguarded_total,
            warnings,
        }
    }
}

/// One line for the operator: where the gate holds, and where not.
fn summary(
    kinds: &[&str],
    guarded_total: usize,
    unguarded: &[GuardedAt],
    unguarded_total: usize,
    holding: usize,
) -> String {
    if holding == 0 {
        return "NOT guarded in the orchestrator: no plugin holds a current report".into();
    }
    let mut out = if guarded_total == 0 {
        "NOT guarded on any entry point".to_owned()
    } else {
        format!(
            "guarded on {guarded_total} entry point{} ({})",
            if guarded_total == 1 { "" } else { "s" },
            kinds.join(", ")
        )
    };
    if unguarded_total != 0 {
        let shown: Vec<String> = unguarded
            .iter()
            .take(3)
            .map(|u| format!("{} {}", u.entry, u.method))
            .collect();
        let more = if unguarded_total > shown.len() {
            format!(", {} more", unguarded_total - shown.len())
        } else {
            String::new()
        };
        out.push_str(&format!(
            "; NOT on {unguarded_total}: {}{more}",
            shown.join(", ")
        ));
    }
    out
}
