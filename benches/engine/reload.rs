//! `reload`, `cold-start` and `many-hooks`: loading hooks, against
//! wasmtime compiling alone.

use crate::guests;
use crate::measure::*;
use crate::setup::*;
use std::path::Path;
use std::time::{Duration, Instant};
use wasmhooks::{Engine, Event};

/// A `misbehave` hook in deny mode: every pre event is denied with the
/// version mark as the reason, so a verdict says which version decided it.
pub(crate) const DENY_VERSION: &str = "[settings]\nmode = \"deny\"\n";

/// Time from renaming version `k` into place to the first event it decides.
/// An event is sent each time the engine announces a change (rather than
/// in a busy loop that would compete with the compiler for the 2 cores).
pub(crate) async fn rename_to_first_event(
    engine: &Engine,
    dir: &Path,
    k: u32,
    event: &[u8],
) -> Duration {
    let mut changes = engine.hook_changes();
    changes.borrow_and_update();
    let start = Instant::now();
    guests::place(dir, "hook.wasm", &guests::misbehave_version(k));
    let wanted = guests::version_mark(k);
    loop {
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .unwrap()
            .unwrap();
        let verdict = engine.pre(Event::from_json(event).unwrap()).await.unwrap();
        if verdict.reason.as_deref() == Some(wanted.as_str()) {
            return start.elapsed();
        }
    }
}

/// Hot reload latency, with a cold cache (never-seen versions: compile) and
/// a warm one (a fresh engine whose disk cache already has them).
pub(crate) async fn reload() {
    let repeats = 15;
    let cache = tempfile::tempdir().unwrap();
    let event = fixture("vm.start.pre");
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for times in [&mut cold, &mut warm] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook.toml"), DENY_VERSION).unwrap();
        guests::place(dir.path(), "hook.wasm", &guests::misbehave_version(0));
        let engine = Engine::new(with_cache(dir.path(), cache.path()))
            .await
            .unwrap();
        for k in 1..=repeats {
            times.push(rename_to_first_event(&engine, dir.path(), k, &event).await);
        }
    }
    println!(
        "reload: rename of a new version into the folder -> first event it decides (median of {repeats})"
    );
    let raw = raw_compile(false);
    let raw_epoch = raw_compile(true);
    println!(
        "  baseline: wasmtime compile alone, default config     {:>8.1} ms",
        millis(raw)
    );
    println!(
        "  baseline: wasmtime compile alone, epoch interruption {:>8.1} ms",
        millis(raw_epoch)
    );
    println!(
        "  cold cache (compile)        {:>8.1} ms   (target <= 100 ms)",
        millis(median(cold))
    );
    println!(
        "  warm cache (disk artifact)  {:>8.1} ms   (target <= 20 ms)",
        millis(median(warm))
    );
}

/// Baseline for the reload figures: compiling the same component with
/// wasmtime directly, median of 5.
pub(crate) fn raw_compile(epoch_interruption: bool) -> Duration {
    let bytes = guests::misbehave_version(99);
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(epoch_interruption);
    let engine = wasmtime::Engine::new(&config).unwrap();
    median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                wasmtime::component::Component::from_binary(&engine, &bytes).unwrap();
                start.elapsed()
            })
            .collect(),
    )
}

/// Engine::new with 100 distinct hooks, without and with the disk cache.
pub(crate) async fn cold_start() {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..100 {
        std::fs::write(
            dir.path().join(format!("hook{k:02}.wasm")),
            guests::misbehave_version(k),
        )
        .unwrap();
        std::fs::write(dir.path().join(format!("hook{k:02}.toml")), DENY_VERSION).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let engine = Engine::new(bench_config(dir.path())).await.unwrap();
    let no_cache = start.elapsed();
    assert_eq!(engine.hooks().len(), 100);
    drop(engine);
    drop(
        Engine::new(with_cache(dir.path(), cache.path()))
            .await
            .unwrap(),
    ); // fills the cache
    let mut warm = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let engine = Engine::new(with_cache(dir.path(), cache.path()))
            .await
            .unwrap();
        warm.push(start.elapsed());
        assert!(engine.hooks().iter().all(|h| h.last_error.is_none()));
    }
    let warm = median(warm);
    println!("cold-start: Engine::new with 100 distinct hooks (compile + link + setup each)");
    println!("  no cache                    {:>8.1} ms", millis(no_cache));
    println!(
        "  warm disk cache             {:>8.1} ms   ({:.1}x faster; target <= 500 ms)",
        millis(warm),
        no_cache.as_secs_f64() / warm.as_secs_f64()
    );
}

/// Per-event cost with 1,000 hooks loaded and one matching, against one hook.
pub(crate) async fn many_hooks() {
    let one = tempfile::tempdir().unwrap();
    let many = tempfile::tempdir().unwrap();
    let protected = "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n";
    for dir in [one.path(), many.path()] {
        std::fs::copy(guests::wasm("deny"), dir.join("deny.wasm")).unwrap();
        std::fs::write(dir.join("deny.toml"), protected).unwrap();
    }
    let others = guests::misbehave_version(0);
    for i in 0..999 {
        std::fs::write(many.path().join(format!("other{i:03}.wasm")), &others).unwrap();
        let toml =
            format!("[settings]\nmode = \"deny\"\nmethods = [\"other.method{i}\", \"vm.start\"]\n");
        std::fs::write(many.path().join(format!("other{i:03}.toml")), toml).unwrap();
    }
    let event = fixture("vm.delete.pre");
    let mut results = Vec::new();
    for dir in [one.path(), many.path()] {
        let engine = Engine::new(bench_config(dir)).await.unwrap();
        let loaded = engine.hooks().len();
        let t = per_iter(2000, 5, async || {
            let verdict = engine.pre(Event::from_json(&event).unwrap()).await.unwrap();
            assert_eq!(verdict.denied_by.as_deref(), Some("deny"));
        })
        .await;
        results.push((loaded, t));
    }
    println!("many-hooks: a pre event that one hook subscribes to");
    println!(
        "  {:>5} hook loaded          {:>8.2} µs",
        results[0].0,
        micros(results[0].1.time)
    );
    println!(
        "  {:>5} hooks loaded         {:>8.2} µs   ({:.2}x; target <= 1.5x)",
        results[1].0,
        micros(results[1].1.time),
        results[1].1.time.as_secs_f64() / results[0].1.time.as_secs_f64()
    );
}
