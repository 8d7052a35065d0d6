//! Engine benchmarks, each against a baseline measured in the same run.
//!
//! `cargo bench --bench engine` runs them all; name sections to run only
//! those, e.g. `cargo bench --bench engine -- per-event`.
//! Figures go in BENCHMARKS.md.

#[path = "../tests/support/guests.rs"]
mod guests;

use std::path::Path;
use std::time::{Duration, Instant};
use wasmhooks::{Config, Engine, Event};

fn main() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if wanted("per-event") {
        runtime.block_on(per_event());
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(guests::root().join(format!("tests/fixtures/xo/{name}.json"))).unwrap()
}

/// Median time per iteration over `batches` batches of `n`.
async fn per_iter<F: AsyncFnMut()>(n: u32, batches: usize, mut f: F) -> Duration {
    for _ in 0..n / 10 {
        f().await; // warm-up
    }
    let mut times = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..n {
            f().await;
        }
        times.push(start.elapsed() / n);
    }
    times.sort();
    times[batches / 2]
}

fn bench_config(dir: &Path) -> Config {
    Config {
        hooks_dir: dir.to_owned(),
        ..Config::default()
    }
}

/// A pre event through the `deny` hook (fresh instance, init, handle),
/// against the same decision as a native Rust closure.
async fn per_event() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::wasm("deny"), dir.path().join("deny.wasm")).unwrap();
    let protected = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";
    std::fs::write(
        dir.path().join("deny.toml"),
        format!("[settings]\nprotected = [\"{protected}\"]\n"),
    )
    .unwrap();
    let engine = Engine::new(bench_config(dir.path())).await.unwrap();
    let delete = fixture("vm.delete.pre");
    let start = fixture("vm.start.pre");

    let native = |bytes: &[u8]| {
        let event: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let vetoed = matches!(event["method"].as_str(), Some("vm.delete" | "vm.stop"))
            && event["params"]["id"].as_str() == Some(protected);
        std::hint::black_box(vetoed)
    };
    let n = 2000;
    let t_native = per_iter(n * 10, 5, async || {
        native(&delete);
    })
    .await;
    let t_hook = per_iter(n, 5, async || {
        let verdict = engine
            .pre(Event::from_json(&delete).unwrap())
            .await
            .unwrap();
        assert!(!verdict.allowed);
    })
    .await;
    let t_unsubscribed = per_iter(n * 10, 5, async || {
        let verdict = engine.pre(Event::from_json(&start).unwrap()).await.unwrap();
        assert!(verdict.allowed);
    })
    .await;
    println!("per-event: a pre event decided by the deny hook vs a native Rust closure");
    println!(
        "  native closure (parse + decide)         {:>9.2} µs",
        micros(t_native)
    );
    println!(
        "  engine.pre, deny hook (fresh instance)  {:>9.2} µs  ({:.0}x native)",
        micros(t_hook),
        t_hook.as_secs_f64() / t_native.as_secs_f64()
    );
    println!(
        "  engine.pre, no hook subscribed          {:>9.2} µs  ({:.1}x native)",
        micros(t_unsubscribed),
        t_unsubscribed.as_secs_f64() / t_native.as_secs_f64()
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
