//! Engine benchmarks, each against a baseline measured in the same run.
//!
//! `cargo bench --bench engine` runs them all; name sections to run only
//! those, e.g. `cargo bench --bench engine -- per-event`.
//! Figures go in BENCHMARKS.md.

#[path = "../../tests/support/guests.rs"]
mod guests;
#[path = "../../tests/support/serve.rs"]
mod serve;

mod alone;
mod delivery;
mod languages;
mod measure;
mod per_event;
mod queue;
mod reload;
mod setup;
mod sidecar;
mod simulate;
mod traced;

use delivery::{delivery, delivery_profile};
use languages::languages;
use per_event::{per_event, profile_loop};
use queue::queue;
use reload::{cold_start, many_hooks, reload};
use sidecar::{pre_latency, sidecar};

fn main() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    if let Ok(filter) = std::env::var("WASMHOOKS_LOG") {
        // As `wasmhooks serve` logs: the engine's spans are for traces.
        tracing_subscriber::fmt()
            .with_env_filter(format!("{filter},wasmhooks::trace=off"))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BENCH_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        // Named, so the sidecar section can tell its threads from the
        // receiver's and the callers' (`measure::cpu_by_thread`).
        .thread_name("bench-engine")
        .enable_all()
        .build()
        .unwrap();
    if wanted("per-event") {
        on_worker(&runtime, per_event());
    }
    if sections.iter().any(|s| s == "profile") {
        // Not part of the default run: a steady loop of one hook, for `perf record`.
        on_worker(&runtime, profile_loop());
    }
    if wanted("reload") {
        on_worker(&runtime, reload());
    }
    if wanted("cold-start") {
        on_worker(&runtime, cold_start());
    }
    if wanted("many-hooks") {
        on_worker(&runtime, many_hooks());
    }
    if wanted("delivery") {
        on_worker(&runtime, delivery());
    }
    if sections.iter().any(|s| s == "delivery-profile") {
        // Not part of the default run: the delivery path alone, for `perf record`.
        on_worker(&runtime, delivery_profile());
    }
    if wanted("sidecar") {
        on_worker(&runtime, sidecar());
    }
    if wanted("pre-latency") {
        on_worker(&runtime, pre_latency());
    }
    if wanted("queue") {
        on_worker(&runtime, queue());
    }
    if wanted("languages") {
        on_worker(&runtime, languages());
    }
    if wanted("simulate") {
        on_worker(&runtime, simulate::simulate());
    }
}

/// Runs a section as a task on the runtime's workers, where an embedder's
/// handler runs (a caller on `block_on`'s own thread would pay a wake-up of
/// another thread for every task the engine spawns).
fn on_worker<F: Future<Output = ()> + 'static>(runtime: &tokio::runtime::Runtime, section: F) {
    /// A section's future, which holds only `Send` values, but whose async
    /// closures rustc cannot prove `Send` for every lifetime ("implementation
    /// of `Send` is not general enough", rust-lang/rust#110338).
    struct Section<F>(F);
    // SAFETY: every value a section holds across an await (engines, events,
    // tempdirs, receivers, closures over them) is `Send`; the bound only
    // fails to be proven for the async closures' higher-ranked lifetimes.
    unsafe impl<F> Send for Section<F> {}
    impl<F: Future> Future for Section<F> {
        type Output = F::Output;
        fn poll(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            // SAFETY: structural pinning of the only field.
            unsafe { self.map_unchecked_mut(|s| &mut s.0) }.poll(cx)
        }
    }
    runtime.block_on(runtime.spawn(Section(section))).unwrap();
}
