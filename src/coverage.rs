//! What each gate covers: which entry points into the orchestrator wait for
//! a pre event's verdict, and which do not.
//!
//! A gate hook vetoes an operation only where the orchestrator asks wasmhooks
//! first. For Xen Orchestra that is the XO plugin's doing, on the entry
//! points it can wrap (JSON-RPC, the REST API); others it can only watch
//! (backup runs), or not see at all (xe, XO's own automation). The plugin
//! reports what it guards ([`CoverageReport`], `PUT /v1/coverage/{reporter}`)
//! and sends it again before its `ttl_secs` ends; wasmhooks matches each
//! gate's subscription against the reports ([`GateCoverage`] in
//! `GET /v1/hooks`). A gate never looks stronger than it is: with no report,
//! a stale one or an unloaded plugin, nothing is shown as guarded, and what
//! a report says it cannot stop is listed with why.
//!
//! Kept in memory and bounded: at most [`MAX_REPORTERS`] reports of at most
//! [`MAX_ENTRIES`] entries.

use crate::config::{HookMode, OnError};
use crate::sandbox::Subscription;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use utoipa::ToSchema;
use wildmatch::WildMatch;

/// Reports kept; a new reporter past this replaces the one heard from least
/// recently.
pub const MAX_REPORTERS: usize = 16;
/// Entries one report may list.
pub const MAX_ENTRIES: usize = 5000;
/// Entries listed per gate in each of [`GateCoverage::guarded`] and
/// [`GateCoverage::unguarded`]; the rest are counted.
pub const MAX_LISTED: usize = 100;
/// Longest reporter name, in bytes.
pub const MAX_REPORTER: usize = 64;
/// Longest `ttl_secs`: a day.
pub const MAX_TTL_SECS: u64 = 86_400;

/// What an orchestrator plugin guards: every entry point it knows, with
/// whether a call there waits for the verdict.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoverageReport {
    /// The plugin and its version, e.g. `xo-server-wasmhooks 0.1.0`.
    #[schema(min_length = 1, max_length = 128)]
    pub plugin: String,
    /// The orchestrator and its version, e.g. `xo-server 5.207.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub orchestrator: Option<String>,
    /// Whether the plugin is loaded. An unloaded plugin guards nothing.
    pub loaded: bool,
    /// Whether a guarded call is refused when wasmhooks cannot be reached
    /// (`true`) or goes ahead (`false`).
    pub fail_closed: bool,
    /// How long the report holds: past this without a new one, what the
    /// plugin guards is unknown, and shown as such.
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(deserialize_with = "whole_number")]
    pub ttl_secs: u64,
    /// Every entry point the plugin knows of, guarded or not.
    #[schema(max_items = 5000)]
    pub entries: Vec<EntryPoint>,
}

/// One way into the orchestrator for one method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryPoint {
    /// Which way in: for Xen Orchestra `jsonrpc` (XO 5's web UI, xo-cli),
    /// `rest` (XO 6's web UI, REST scripts, XO's MCP server), `job` (XO's
    /// job executor), `xapi` (around XO).
    #[schema(min_length = 1, max_length = 32)]
    pub entry: String,
    /// The method its calls are events of (`vm.delete`), or `*` for every
    /// method.
    #[schema(min_length = 1, max_length = 256)]
    pub method: String,
    /// Where, for an entry point with routes: `DELETE /rest/v0/vms/:id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 512)]
    pub route: Option<String>,
    /// Whether a veto there stops the operation.
    pub guarded: bool,
    /// Why it is not guarded, or anything else the operator should know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub note: Option<String>,
}

/// Why a coverage report was refused.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    /// A field is missing, too long or out of range.
    #[error("coverage report of {reporter:?}: `{field}` {problem}")]
    Field {
        /// The reporter's name, as given.
        reporter: String,
        /// The field at fault, e.g. `entries[3].method`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A reporter, as `GET /v1/coverage` lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReporterStatus {
    /// The name it reported under (for the XO plugin: `xo:HOSTNAME`).
    pub reporter: String,
    /// The plugin and its version.
    pub plugin: String,
    /// The orchestrator and its version, if it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<String>,
    /// When its last report arrived (Unix ms).
    pub received_ms: u64,
    /// How long ago that was, in milliseconds.
    pub age_ms: u64,
    /// Whether that report still holds (younger than its `ttl_secs`).
    pub fresh: bool,
    /// Whether the plugin is loaded.
    pub loaded: bool,
    /// Whether its guarded calls are refused while wasmhooks is unreachable.
    pub fail_closed: bool,
    /// Entry points listed.
    pub entries: usize,
    /// Of those, guarded.
    pub guarded: usize,
}

/// What one gate (a hook subscribed to pre events) covers.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, ToSchema)]
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

struct Stored {
    report: CoverageReport,
    received: Instant,
    received_ms: u64,
}

/// The reports heard, by reporter.
#[derive(Default)]
pub(crate) struct Coverage {
    reports: Mutex<HashMap<String, Stored>>,
}

impl Coverage {
    /// Keeps `report` as what `reporter` guards now, once checked.
    pub fn put(&self, reporter: &str, report: CoverageReport) -> Result<(), CoverageError> {
        check(reporter, &report)?;
        let mut reports = self.reports.lock().unwrap();
        if !reports.contains_key(reporter) && reports.len() >= MAX_REPORTERS {
            let oldest = reports
                .iter()
                .min_by_key(|(_, s)| s.received)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                reports.remove(&oldest);
            }
        }
        let received_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        reports.insert(
            reporter.to_owned(),
            Stored {
                report,
                received: Instant::now(),
                received_ms,
            },
        );
        Ok(())
    }

    /// Every reporter, by name.
    pub fn reporters(&self) -> Vec<ReporterStatus> {
        self.reporters_at(Instant::now())
    }

    fn reporters_at(&self, now: Instant) -> Vec<ReporterStatus> {
        let reports = self.reports.lock().unwrap();
        let mut out: Vec<ReporterStatus> = reports
            .iter()
            .map(|(name, s)| status(name, s, now))
            .collect();
        out.sort_by(|a, b| a.reporter.cmp(&b.reporter));
        out
    }

    /// What a gate with `subscription` and `mode` covers.
    pub fn of_gate(
        &self,
        subscription: &Subscription,
        mode: HookMode,
        on_error: OnError,
    ) -> GateCoverage {
        self.of_gate_at(subscription, mode, on_error, Instant::now())
    }

    fn of_gate_at(
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

/// A non-negative integer, also written as `30.0` (JSON does not tell them
/// apart, and the OpenAPI document's `integer` takes both).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                .map(|f| f as u64)
        })
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number of seconds, got {n}"))
        })
}

fn status(name: &str, s: &Stored, now: Instant) -> ReporterStatus {
    let age = now.saturating_duration_since(s.received);
    let r = &s.report;
    ReporterStatus {
        reporter: name.to_owned(),
        plugin: r.plugin.clone(),
        orchestrator: r.orchestrator.clone(),
        received_ms: s.received_ms,
        age_ms: age.as_millis() as u64,
        fresh: age <= Duration::from_secs(r.ttl_secs),
        loaded: r.loaded,
        fail_closed: r.fail_closed,
        entries: r.entries.len(),
        guarded: r.entries.iter().filter(|e| e.guarded).count(),
    }
}

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

fn check(reporter: &str, r: &CoverageReport) -> Result<(), CoverageError> {
    let bad = |field: String, problem: String| CoverageError::Field {
        reporter: reporter.chars().take(MAX_REPORTER).collect(),
        field,
        problem,
    };
    if reporter.is_empty()
        || reporter.len() > MAX_REPORTER
        || !reporter
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
    {
        return Err(bad(
            "reporter".into(),
            format!("must be 1 to {MAX_REPORTER} of A-Z a-z 0-9 . _ : @ -, e.g. xo:myhost"),
        ));
    }
    // Characters, as the OpenAPI document's maxLength counts them.
    let text = |field: String, value: &str, max: usize, empty_ok: bool| {
        let n = value.chars().count();
        if (!empty_ok && n == 0) || n > max {
            Err(bad(
                field,
                format!(
                    "must be {}to {max} characters, got {n}",
                    if empty_ok { "" } else { "1 " }
                ),
            ))
        } else {
            Ok(())
        }
    };
    text("plugin".into(), &r.plugin, 128, false)?;
    if let Some(o) = &r.orchestrator {
        text("orchestrator".into(), o, 128, false)?;
    }
    if !(1..=MAX_TTL_SECS).contains(&r.ttl_secs) {
        return Err(bad(
            "ttl_secs".into(),
            format!("must be 1 to {MAX_TTL_SECS}, got {}", r.ttl_secs),
        ));
    }
    if r.entries.len() > MAX_ENTRIES {
        return Err(bad(
            "entries".into(),
            format!("lists at most {MAX_ENTRIES}, got {}", r.entries.len()),
        ));
    }
    for (i, e) in r.entries.iter().enumerate() {
        text(format!("entries[{i}].entry"), &e.entry, 32, false)?;
        text(format!("entries[{i}].method"), &e.method, 256, false)?;
        if let Some(route) = &e.route {
            text(format!("entries[{i}].route"), route, 512, false)?;
        }
        if let Some(note) = &e.note {
            text(format!("entries[{i}].note"), note, 1024, true)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Phase;

    fn entry(entry: &str, method: &str, guarded: bool) -> EntryPoint {
        EntryPoint {
            entry: entry.into(),
            method: method.into(),
            route: None,
            guarded,
            note: None,
        }
    }

    fn report(entries: Vec<EntryPoint>) -> CoverageReport {
        CoverageReport {
            plugin: "xo-server-wasmhooks 0.1.0".into(),
            orchestrator: Some("xo-server 5.207.2".into()),
            loaded: true,
            fail_closed: true,
            ttl_secs: 30,
            entries,
        }
    }

    fn gate(methods: &[&str]) -> Subscription {
        Subscription {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            phases: vec![Phase::Pre],
        }
    }

    #[test]
    fn a_gate_sees_what_matches_it_guarded_or_not() {
        let c = Coverage::default();
        c.put(
            "xo:a",
            report(vec![
                entry("jsonrpc", "vm.delete", true),
                entry("rest", "vm.delete", true),
                entry("jsonrpc", "vm.start", true),
                entry("job", "backupNg.runJob", false),
                entry("xapi", "*", false),
            ]),
        )
        .unwrap();
        let g = c.of_gate(&gate(&["vm.delete"]), HookMode::Enforce, OnError::Deny);
        assert_eq!(g.guarded_total, 2);
        assert_eq!(g.unguarded_total, 1, "xapi * matches every gate");
        assert_eq!(g.unguarded[0].method, "*");
        assert!(g.warnings.is_empty(), "{:?}", g.warnings);
        assert_eq!(
            g.summary,
            "guarded on 2 entry points (jsonrpc, rest); NOT on 1: xapi *"
        );
        let g = c.of_gate(&gate(&["backupNg.*"]), HookMode::Monitor, OnError::Deny);
        assert_eq!(g.guarded_total, 0);
        assert_eq!(g.unguarded_total, 2);
        assert!(
            g.summary
                .starts_with("NOT guarded on any entry point; NOT on 2")
        );
        assert!(g.warnings.iter().any(|w| w.starts_with("monitor mode")));
    }

    #[test]
    fn no_report_a_stale_one_or_an_unloaded_plugin_guards_nothing() {
        let c = Coverage::default();
        let sub = gate(&["vm.delete"]);
        let g = c.of_gate(&sub, HookMode::Enforce, OnError::Deny);
        assert_eq!(g.guarded_total, 0);
        assert!(g.summary.starts_with("NOT guarded in the orchestrator"));
        assert!(g.warnings[0].starts_with("no orchestrator plugin holds a current report"));

        c.put("xo:a", report(vec![entry("jsonrpc", "vm.delete", true)]))
            .unwrap();
        let later = Instant::now() + Duration::from_secs(31);
        let g = c.of_gate_at(&sub, HookMode::Enforce, OnError::Deny, later);
        assert_eq!(g.guarded_total, 0, "stale");
        assert!(g.warnings.iter().any(|w| w.contains("past its 30 s")));
        assert!(!c.reporters_at(later)[0].fresh);

        let mut unloaded = report(vec![entry("jsonrpc", "vm.delete", true)]);
        unloaded.loaded = false;
        c.put("xo:a", unloaded).unwrap();
        let g = c.of_gate(&sub, HookMode::Enforce, OnError::Deny);
        assert_eq!(g.guarded_total, 0);
        assert!(g.warnings.iter().any(|w| w.contains("is unloaded")));
    }

    #[test]
    fn a_second_reporter_gone_stale_and_a_gate_that_fails_open_are_in_the_summary() {
        let c = Coverage::default();
        let mut lasting = report(vec![entry("jsonrpc", "vm.delete", true)]);
        lasting.ttl_secs = 3600;
        c.put("xo:a", lasting).unwrap();
        c.put("xo:b", report(vec![entry("rest", "vm.delete", true)]))
            .unwrap();
        let later = Instant::now() + Duration::from_secs(31);
        let g = c.of_gate_at(
            &gate(&["vm.delete"]),
            HookMode::Enforce,
            OnError::Allow,
            later,
        );
        assert_eq!(
            g.summary,
            "guarded on 1 entry point (jsonrpc); NOT known for xo:b (stale)"
        );
        assert!(
            g.warnings
                .iter()
                .any(|w| w.contains("on_error = \"allow\""))
        );
    }

    #[test]
    fn a_plugin_that_fails_open_is_said_to() {
        let c = Coverage::default();
        let mut r = report(vec![entry("jsonrpc", "vm.delete", true)]);
        r.fail_closed = false;
        c.put("xo:a", r).unwrap();
        let g = c.of_gate(&gate(&["vm.*"]), HookMode::Enforce, OnError::Deny);
        assert_eq!(g.guarded_total, 1);
        assert!(g.warnings[0].contains("fails open"));
    }

    #[test]
    fn reports_are_bounded_and_checked() {
        let c = Coverage::default();
        for i in 0..MAX_REPORTERS + 3 {
            c.put(&format!("xo:{i}"), report(vec![])).unwrap();
        }
        assert_eq!(c.reporters().len(), MAX_REPORTERS);
        assert!(
            c.reporters().iter().all(|r| r.reporter != "xo:0"),
            "the oldest went"
        );
        let e = c.put("bad name", report(vec![])).unwrap_err();
        assert!(matches!(&e, CoverageError::Field { field, .. } if field == "reporter"));
        let mut r = report(vec![entry("jsonrpc", &"m".repeat(300), true)]);
        let e = c.put("xo:a", r.clone()).unwrap_err();
        assert!(matches!(&e, CoverageError::Field { field, .. } if field == "entries[0].method"));
        r.entries = vec![entry("jsonrpc", "vm.delete", true); MAX_ENTRIES + 1];
        assert!(c.put("xo:a", r.clone()).is_err());
        r.entries.clear();
        r.ttl_secs = 0;
        let e = c.put("xo:a", r).unwrap_err();
        assert!(matches!(&e, CoverageError::Field { field, .. } if field == "ttl_secs"));
    }

    #[test]
    fn a_long_list_is_cut_and_counted() {
        let c = Coverage::default();
        let mut entries: Vec<_> = (0..MAX_LISTED + 50)
            .map(|i| entry("jsonrpc", &format!("vm.m{i}"), true))
            .collect();
        entries.push(entry("rest", "vm.last", true));
        c.put("xo:a", report(entries)).unwrap();
        let g = c.of_gate(&gate(&["*"]), HookMode::Enforce, OnError::Deny);
        assert_eq!(g.guarded.len(), MAX_LISTED);
        assert_eq!(g.guarded_total, MAX_LISTED + 51);
        assert_eq!(g.summary, "guarded on 151 entry points (jsonrpc, rest)");
    }
}
