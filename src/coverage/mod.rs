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

use crate::util::now_ms;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod gate;
mod report;
#[cfg(test)]
mod tests;

pub use gate::{GateCoverage, GuardedAt};
use report::check;
pub use report::{CoverageError, CoverageReport, EntryPoint};

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

/// A reporter, as `GET /v1/coverage` lists it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
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
    pub(crate) fn put(&self, reporter: &str, report: CoverageReport) -> Result<(), CoverageError> {
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
        let received_ms = now_ms();
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
    pub(crate) fn reporters(&self) -> Vec<ReporterStatus> {
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
}

/// A reporter's status at `now`.
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
