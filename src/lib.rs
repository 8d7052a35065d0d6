//! # wasmhooks
//!
//! A webhook engine whose hooks are WebAssembly components. An orchestrator
//! emits an event before (`pre`) and after (`post`) each operation; every
//! hook subscribed to it decides what to do (nothing, one or more HTTP
//! deliveries, or for a pre event a veto), and the engine sends the
//! deliveries with retries.
//!
//! Hooks implement the `hook` world of `wit/hook.wit`. Each runs in a fresh
//! sandboxed instance per event, with a deadline and a memory cap, and no
//! access to files, environment or network.
//!
//! ```no_run
//! # async fn example() -> Result<(), wasmhooks::Error> {
//! use wasmhooks::{Engine, Event};
//! use wasmhooks::config::Config;
//!
//! let engine = Engine::new(Config { hooks_dir: "hooks".into(), ..Config::default() }).await?;
//! let event = Event::from_json(br#"{"callId":"k3q9","method":"vm.delete","type":"pre",
//!     "timestamp":1764338400123,"params":{"id":"0a9b"}}"#)?;
//! let verdict = engine.pre(event).await?;
//! if !verdict.allowed {
//!     println!("{} vetoed it: {}", verdict.denied_by.unwrap(), verdict.reason.unwrap());
//! }
//! # Ok(()) }
//! ```
//!
//! A runnable round trip, with an empty hooks folder (so everything is allowed
//! and no WebAssembly runs):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use wasmhooks::{Engine, Event};
//! use wasmhooks::config::Config;
//!
//! let hooks = tempfile::tempdir()?;
//! let config = Config {
//!     hooks_dir: hooks.path().into(),
//!     // The durable queue's folder; `None` keeps it in memory, for this example.
//!     state_dir: None,
//!     ..Config::default()
//! };
//! let engine = Engine::new(config).await?;
//! assert!(engine.hooks().is_empty());
//!
//! let pre = Event::from_json(br#"{"callId":"c1","method":"vm.start","type":"pre","timestamp":1}"#)?;
//! assert!(engine.pre(pre).await?.allowed);
//!
//! let post = Event::from_json(br#"{"callId":"c1","method":"vm.start","type":"post",
//!     "timestamp":2,"duration":1,"result":true}"#)?;
//! engine.post(post).await?;
//!
//! // A malformed event names the field at fault.
//! let bad = Event::from_json(br#"{"callId":"c2","method":"vm.start","type":"later","timestamp":1}"#);
//! assert!(matches!(bad, Err(wasmhooks::EventError::Field { field: "type", .. })));
//! # Ok(()) }
//! ```
//!
//! ## The path of an event
//!
//! Each folder of `src/` is one step, and a module imports only the steps
//! before it (`tests/all/layers.rs` holds the list). An event crosses these
//! modules, entering each once:
//!
//! **A post event**, from the caller's `Engine::post` to the receiver:
//! 1. `engine`: checks that it is a post event.
//! 2. `ingest`: the one place that accepts an event. It recognises a copy
//!    sent before (dedup), and waits for a place among the events in flight.
//! 3. `hooks`: the live snapshot says which hooks want it.
//! 4. `run`: each of them, in a task of its own, and what it returned,
//!    checked against the caps and made into delivery records (`delivery`).
//! 5. `sandbox`: a fresh `Store` per hook and event, with a CPU deadline and
//!    a memory cap.
//! 6. `outbox`: commits the records (or, for slow hooks, the event itself,
//!    journaled) ...
//! 7. `queue`: ... durably; the caller's answer waits for this commit only.
//!
//! Then, apart from the caller: `outbox` claims what is due from `queue`,
//! `delivery` makes one attempt (the egress guard, the signature, the POST,
//! the breaker), and `outbox` records its outcome in `queue`. `activity`
//! (what the console shows) and `metrics` are handed finished records, and
//! `alerts` what the engine has to say about itself (a circuit opened, a
//! dead letter, a hook that failed to load), summarised.
//!
//! **A pre event**, from `Engine::pre` to its verdict: `engine` → `ingest`
//! (a copy sent before gets the first one's verdict) → `hooks` → `run` →
//! `sandbox`; `run` builds the verdict from every hook's answer in one place
//! (`run/verdict.rs`); `ingest` then waits, within the wait budget, for the
//! first outcome of the `wait` hooks' deliveries (`outbox`, `queue`,
//! `delivery`, the same path as any delivery), commits the others, and
//! returns the verdict.
//!
//! Each step opens a span under the target `wasmhooks::trace` ([`trace`]):
//! `ingest`, then `hook` per call and `commit`, and `attempt` per attempt,
//! which become one OpenTelemetry trace per event where the subscriber has a
//! `tracing-opentelemetry` layer (`wasmhooks serve --otlp-endpoint`).
//!
//! Beside the path: `config` (settings, checked once), `trust` (who may
//! ship a hook: keys and module signatures, checked where `hooks` reads a
//! hook's files), `coverage` (which
//! entry points into the orchestrator wait for a gate), `sources` (events
//! the engine fetches itself, from XO's event stream, into `ingest`, and
//! its own alerts, as system events, into `ingest` too),
//! `dry_run` (one hook on one event, nothing sent), `error` (the public
//! API's umbrella error) and, behind the default `server` feature, `server`
//! (the HTTP API, its OpenAPI document and the console).

#![deny(missing_docs, unreachable_pub)]

pub mod activity;
mod alerts;
mod archive;
pub mod config;
pub mod coverage;
mod delivery;
mod dry_run;
mod engine;
mod error;
mod event;
mod files;
mod hooks;
mod ingest;
mod metrics;
mod must_finish;
mod outbox;
mod queue;
mod run;
mod sandbox;
#[cfg(feature = "server")]
pub mod server;
pub mod simulate;
pub mod sources;
pub mod trace;
pub mod trust;
mod util;

pub use archive::{Archive, ArchiveError, ArchivedEvent};
pub use delivery::{AttemptOutcome, AttemptRecord, Circuit};
pub use dry_run::{DryDelivery, DryOutcome, DryRun, dry_run};
pub use engine::{Engine, ReceiverStatus};
pub use error::Error;
pub use event::{Event, EventError, Phase};
pub use hooks::bucket;
pub use hooks::{Abi, HookState, HookStatus, LoadError, Stage, WatchError};
/// Not API: a door for `benches/` (the `bench` feature).
#[cfg(feature = "bench")]
#[doc(hidden)]
pub use queue::bench;
pub use queue::{
    DeliveryAdmin, DeliveryDetail, DeliveryFilter, DeliveryInfo, DeliveryQuery, DeliveryState,
    QueueError, Replay,
};
pub use run::{CallError, CallSite, HookFailure, Verdict, WouldDeny};
pub use sandbox::{SandboxError, Subscription};
