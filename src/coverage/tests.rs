//! The store, the checks and a gate's coverage, without a server.

use super::*;
use crate::config::{HookMode, OnError};
use crate::event::Phase;
use crate::sandbox::Subscription;

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
