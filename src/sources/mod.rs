//! Event sources the engine reads by itself, beside the events callers
//! post: Xen Orchestra's event stream (`xo`), which turns what XO reports
//! of its objects into observed events ([`Phase::Observed`]); and the
//! engine itself (`system`), whose alerts become system events
//! ([`Phase::System`]).
//!
//! A source runs for as long as its engine does, reconnects by itself, and
//! says how it is doing ([`SourceStatus`], `GET /v1/sources`).
//!
//! [`Phase::Observed`]: crate::Phase::Observed
//! [`Phase::System`]: crate::Phase::System

mod objects;
mod system;
mod xo;

use crate::alerts::{Alert, Alerts, Kind};
use crate::config::SourcesConfig;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::task::AbortOnDropHandle;

/// How a source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    /// Opening the stream.
    Connecting,
    /// Subscribing and listing the objects (comparing them after a gap).
    Syncing,
    /// Reading changes as they come.
    Live,
    /// The stream failed or ended: reconnecting after a pause.
    Retrying,
    /// The orchestrator refused the token: trying again after the longest
    /// pause, and saying so.
    Refused,
}

/// A source, as `GET /v1/sources` lists it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SourceStatus {
    /// Its name (`xo`).
    pub name: String,
    /// Where it reads from.
    pub url: String,
    /// How it is doing.
    pub state: SourceState,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// Why it last failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it last heard from the orchestrator, ping included (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// Connections tried since the engine started.
    pub connections: u64,
    /// Times it compared a fresh listing after a gap.
    pub resyncs: u64,
    /// Observed events it emitted.
    pub events: u64,
    /// Events set aside because the engine could not take them in time
    /// (their changes found again by the next listing).
    pub dropped: u64,
    /// Objects whose last state it keeps.
    pub objects: usize,
    /// The most it keeps.
    pub max_objects: usize,
    /// The collections it watches.
    pub collections: Vec<String>,
    /// Collections it could not watch this connection, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Why a source stopped reading (then reconnects), or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Its settings cannot be used: a token file, a CA file.
    #[error("source {source_name}: {reason}")]
    Setup {
        /// The source.
        source_name: &'static str,
        /// What is wrong, and with which setting.
        reason: String,
    },
    /// The orchestrator cannot be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The orchestrator refused the token.
    #[error(
        "XO refused the token ({status}: {said}): give [sources.xo] token a valid XO \
         authentication token (XO's user page, or xo-cli token.create)"
    )]
    Refused {
        /// Its answer's status.
        status: u16,
        /// What it said.
        said: String,
    },
    /// Another answer than expected.
    #[error("{what} answered {status}: {said}")]
    Http {
        /// The request.
        what: String,
        /// The answer's status.
        status: u16,
        /// What it said.
        said: String,
    },
    /// The stream broke.
    #[error("the event stream broke: {reason}")]
    Stream {
        /// Why.
        reason: String,
    },
    /// Not a ping or an event for this long.
    #[error("the event stream was silent for {ms} ms (XO pings every 30 s)")]
    Silent {
        /// How long.
        ms: u64,
    },
    /// Something the orchestrator's protocol does not say.
    #[error("unexpected from XO: {reason}")]
    Protocol {
        /// What.
        reason: String,
    },
    /// More objects changed while listing than can be kept.
    #[error(
        "more than {pending} objects changed while XO was listing them (sources.xo.max_objects)"
    )]
    Overflow {
        /// The bound.
        pending: usize,
    },
    /// Events were lost (the engine was too slow, or refused them).
    #[error(
        "observed events were lost (the engine could not take them in time): reading again from scratch"
    )]
    Lost,
}

impl SourceError {
    /// A short name for the metric's `kind` label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SourceError::Setup { .. } => "setup",
            SourceError::Unreachable { .. } => "unreachable",
            SourceError::Refused { .. } => "refused",
            SourceError::Http { .. } => "http",
            SourceError::Stream { .. } | SourceError::Silent { .. } => "stream",
            SourceError::Protocol { .. } => "protocol",
            SourceError::Overflow { .. } | SourceError::Lost => "overflow",
        }
    }
}

/// A source's status, updated as it goes.
pub(crate) struct Status {
    inner: Mutex<StatusInner>,
    /// Where losing the orchestrator, and finding it again, is raised.
    alerts: Arc<Alerts>,
}

struct StatusInner {
    status: SourceStatus,
    /// When the last live session ended, and why: the gap a resync reports.
    gap: Option<(Instant, String)>,
    /// Whether losing the orchestrator was raised, and not its return.
    down: bool,
}

impl Status {
    fn new(
        name: &str,
        url: &str,
        max_objects: usize,
        collections: Vec<String>,
        alerts: Arc<Alerts>,
    ) -> Status {
        Status {
            alerts,
            inner: Mutex::new(StatusInner {
                down: false,
                status: SourceStatus {
                    name: name.into(),
                    url: url.into(),
                    state: SourceState::Connecting,
                    since_ms: crate::util::now_ms(),
                    last_error: None,
                    last_heard_ms: None,
                    connections: 0,
                    resyncs: 0,
                    events: 0,
                    dropped: 0,
                    objects: 0,
                    max_objects,
                    collections,
                    skipped: Vec::new(),
                },
                gap: None,
            }),
        }
    }

    fn snapshot(&self) -> SourceStatus {
        self.inner.lock().unwrap().status.clone()
    }

    pub(crate) fn set(&self, state: SourceState) {
        let mut i = self.inner.lock().unwrap();
        if state == SourceState::Connecting {
            i.status.connections += 1;
            i.status.skipped.clear();
        }
        i.status.state = state;
        i.status.since_ms = crate::util::now_ms();
    }

    pub(crate) fn live(&self, objects: usize) {
        self.set(SourceState::Live);
        let mut i = self.inner.lock().unwrap();
        i.status.objects = objects;
        i.status.last_error = None;
        i.gap = None;
        if std::mem::take(&mut i.down) {
            let alert = Alert::new(Kind::SourceReconnected, i.status.name.as_str())
                .with("url", i.status.url.as_str());
            drop(i);
            self.alerts.raise(alert);
        }
    }

    /// The source stopped reading (`kind`: as the metric's label, e.g.
    /// `unreachable`, or `overflow` when the engine fell behind).
    pub(crate) fn failed(&self, state: SourceState, why: String, kind: &'static str) {
        let mut i = self.inner.lock().unwrap();
        i.status.state = state;
        i.status.since_ms = crate::util::now_ms();
        i.gap.get_or_insert_with(|| (Instant::now(), why.clone()));
        let alert = (!std::mem::replace(&mut i.down, true)).then(|| {
            Alert::new(Kind::SourceDisconnected, i.status.name.as_str())
                .with("url", i.status.url.as_str())
                .with("state", serde_json::to_value(state).unwrap_or_default())
                .with("reason", kind)
                .with("error", why.as_str())
        });
        i.status.last_error = Some(why);
        drop(i);
        if let Some(alert) = alert {
            self.alerts.raise(alert);
        }
    }

    /// What the last gap was, for a resync event: how long, and why.
    pub(crate) fn gap(&self) -> Option<String> {
        let i = self.inner.lock().unwrap();
        i.gap.as_ref().map(|(at, why)| {
            format!(
                "a gap of {:.1} s ({why}): changes made meanwhile may not have been told, and are found by comparing a fresh listing",
                at.elapsed().as_secs_f64()
            )
        })
    }

    pub(crate) fn skipped(&self, why: String) {
        self.inner.lock().unwrap().status.skipped.push(why);
    }

    pub(crate) fn heard(&self) {
        self.inner.lock().unwrap().status.last_heard_ms = Some(crate::util::now_ms());
    }

    pub(crate) fn emitted(&self) {
        self.inner.lock().unwrap().status.events += 1;
    }

    pub(crate) fn dropped(&self) {
        self.inner.lock().unwrap().status.dropped += 1;
    }

    pub(crate) fn resynced(&self) {
        self.inner.lock().unwrap().status.resyncs += 1;
    }

    pub(crate) fn objects(&self, n: usize) {
        self.inner.lock().unwrap().status.objects = n;
    }
}

/// The engine's running sources.
pub(crate) struct Sources {
    running: Vec<(Arc<Status>, AbortOnDropHandle<()>)>,
    /// The engine's own alerts, as system events.
    system: AbortOnDropHandle<()>,
}

impl Sources {
    /// Starts the configured sources: each reads until the engine is dropped.
    pub(crate) fn start(
        config: &SourcesConfig,
        ingest: &Arc<Ingest>,
        metrics: &Arc<Metrics>,
        alerts: &Arc<Alerts>,
    ) -> Result<Sources, SourceError> {
        let mut running = Vec::new();
        if let Some(xo) = &config.xo {
            let status = Arc::new(Status::new(
                xo::NAME,
                &xo::shown(&xo.url),
                xo.max_objects,
                xo.collections.keys().cloned().collect(),
                alerts.clone(),
            ));
            let source =
                xo::XoSource::new(xo.clone(), ingest.clone(), status.clone(), metrics.clone())?;
            let task = AbortOnDropHandle::new(tokio::spawn(source.run()));
            running.push((status, task));
        }
        let system = system::emit(alerts.clone(), ingest.clone(), metrics.clone());
        let system = AbortOnDropHandle::new(tokio::spawn(system));
        Ok(Sources { running, system })
    }

    /// Every source's status.
    pub(crate) fn statuses(&self) -> Vec<SourceStatus> {
        self.running.iter().map(|(s, _)| s.snapshot()).collect()
    }

    /// Stops reading: no new observed event after this.
    pub(crate) fn stop(&self) {
        for (_, task) in &self.running {
            task.abort();
        }
        self.system.abort();
    }
}
