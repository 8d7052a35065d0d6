//! [`simulate`]: a new version of a hook replayed over the archive (see
//! [`crate::Archive`]), in dry run, against what the live version decided
//! on the same events. Nothing is sent and nothing is stopped.
//!
//! Here the replay; `report.rs` the report, built as events go by, in
//! bounded memory whatever the archive's size.

mod report;

pub use report::{
    Example, Examples, FailureCount, MAX_METHODS, MethodSummary, OTHERS, ReceiverChange,
    SimulationReport, Timing,
};

use crate::archive::{Archive, ArchiveError, ArchivedEvent};
use crate::config::Config;
use crate::delivery::new_uid;
use crate::dry_run::load_alone;
use crate::error::Error;
use crate::event::Event;
use crate::hooks::{LiveHook, SettingsFrom};
use crate::run::Runner;
use futures::StreamExt;
use report::{Replayed, Tally};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to simulate: see [`simulate`].
#[derive(Debug, Clone)]
pub struct Simulation {
    /// The new version's `.wasm`.
    pub wasm: PathBuf,
    /// Its settings file (a `NAME.toml`); `None`: the one beside `wasm`,
    /// if any. The version's hash covers it as the engine's does, so the
    /// live version's own files replay as the same version.
    pub settings: Option<PathBuf>,
    /// The live hook to compare with, as the archive names it; `None`: the
    /// new version's own name.
    pub live: Option<String>,
    /// Replay the events archived since then (Unix ms).
    pub from_ms: u64,
    /// Examples kept of each kind of change (newly denied, newly allowed).
    pub examples: usize,
    /// Calls at once: one per core keeps them all busy and times honest
    /// (a call that waits for a core would count its wait); fewer leaves
    /// room for an engine's own work.
    pub parallel: usize,
}

impl Simulation {
    /// The events of the last `since` through `wasm`, against the live hook
    /// of the same name, with 10 examples of each change.
    pub fn new(wasm: impl Into<PathBuf>, since: Duration) -> Simulation {
        Simulation {
            wasm: wasm.into(),
            settings: None,
            live: None,
            from_ms: crate::util::now_ms().saturating_sub(since.as_millis() as u64),
            examples: 10,
            parallel: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Replays the events of `archive` archived since `simulation.from_ms`
/// through a new version of a hook, in dry run (its deliveries are not
/// sent, its vetoes stop nothing), under `config`'s sandbox and limits, and
/// reports what it would have changed against what the live version
/// decided: events newly denied or allowed, deliveries per receiver,
/// failures per method, and the new version's time per event. The new
/// version's `mode` is not applied: what it would deny is counted as
/// denied. Memory stays flat: the archive is read a page at a time, and the
/// report keeps counts and a few examples.
///
/// Fails if the new version does not load (its `setup` refuses its
/// settings, say) or if the archive cannot be read; an archived event that
/// cannot be read is counted in [`SimulationReport::unreadable`].
pub async fn simulate(
    config: &Config,
    archive: &Archive,
    simulation: Simulation,
) -> Result<SimulationReport, Error> {
    let settings = simulation
        .settings
        .map_or(SettingsFrom::Beside, SettingsFrom::File);
    let (mut runner, hook) = load_alone(config, &simulation.wasm, settings).await?;
    runner.log_failures = false;
    let live = simulation.live.unwrap_or_else(|| hook.name().to_owned());
    let mut tally = Tally::new(&hook, &live, simulation.from_ms, simulation.examples);
    let parallel = simulation.parallel.max(1);
    let (runner, hook) = (&runner, &hook);
    let mut replayed = archive
        .events(simulation.from_ms)
        .map(|archived| async move {
            match archived {
                Ok(archived) => Ok(Some(replay(runner, hook, archived).await)),
                Err(e @ ArchiveError::Record { .. }) => {
                    tracing::warn!("{e}");
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .buffered(parallel);
    while let Some(replayed) = replayed.next().await {
        match replayed? {
            Some(replayed) => tally.add(replayed),
            None => tally.unreadable_record(),
        }
    }
    Ok(tally.report())
}

/// One archived event through the new version, if it subscribes to it.
async fn replay(runner: &Runner, hook: &LiveHook, archived: ArchivedEvent) -> Replayed {
    let event = match serde_json::to_vec(&archived.event)
        .ok()
        .and_then(|bytes| Event::from_json(&bytes).ok())
    {
        Some(event) => event,
        None => {
            return Replayed {
                archived,
                event: None,
                result: None,
                took: Duration::ZERO,
            };
        }
    };
    if !hook.wants(&event) {
        return Replayed {
            archived,
            event: Some(event),
            result: None,
            took: Duration::ZERO,
        };
    }
    let started = Instant::now();
    let result = runner.run(hook, &event, &new_uid()).await;
    Replayed {
        archived,
        event: Some(event),
        result: Some(result),
        took: started.elapsed(),
    }
}
