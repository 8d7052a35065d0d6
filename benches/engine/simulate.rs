//! `simulate`: a stricter version of the `deny` hook replayed over an
//! archive of 100,000 events (`BENCH_SIMULATE_EVENTS`), against two floors
//! measured in the same run: reading the archive alone (the raw loop) and
//! wasmtime alone deciding each event. Memory is sampled during a
//! simulation of a tenth of the events and of all of them: flat if the two
//! peaks are close.

use crate::alone;
use crate::guests;
use crate::measure::*;
use crate::setup::*;
use futures::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use wasmhooks::simulate::{Simulation, simulate as run_simulation};
use wasmhooks::{Archive, Engine, Event};

const A: &str = "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d";
const B: &str = "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908";

/// Pre event `i`: a delete, stop or start, one in seven on A, one in seven on B.
fn event(i: usize) -> Event {
    let method = ["vm.delete", "vm.stop", "vm.start"][i % 3];
    let id = match i % 7 {
        0 => A.to_owned(),
        1 => B.to_owned(),
        _ => format!("{i:08x}-0000-4000-8000-{i:012x}"),
    };
    let json = serde_json::json!({
        "callId": format!("call-{i}"),
        "userName": format!("user{}@example.org", i % 5),
        "method": method,
        "params": {"id": id, "force": false},
        "timestamp": 1_764_338_700_999u64,
        "type": "pre",
    });
    Event::from_value(json).unwrap()
}

/// An archive of `n` pre events decided by the deny hook protecting A, in
/// the state folder `dir/state`.
async fn record(dir: &Path, n: usize) -> Archive {
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::copy(guests::wasm("deny"), hooks.join("deny.wasm")).unwrap();
    std::fs::write(
        hooks.join("deny.toml"),
        format!("[settings]\nprotected = [\"{A}\"]\n"),
    )
    .unwrap();
    let mut config = bench_config(&hooks);
    config.state_dir = Some(dir.join("state"));
    config.fsync = false;
    config.archive = Some(Default::default());
    let engine = Engine::new(config).await.unwrap();
    let engine = &engine;
    futures::stream::iter(0..n)
        .map(|i| async move { engine.pre(event(i)).await.unwrap() })
        .buffer_unordered(8)
        .for_each(|_| async {})
        .await;
    engine.drain().await;
    assert!(engine.shutdown(std::time::Duration::from_secs(10)).await);
    Archive::open(&dir.join("state")).unwrap()
}

/// The largest resident size (MiB) while `work` runs, sampled every 2 ms.
async fn peak_rss_during<T>(work: impl Future<Output = T>) -> (T, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max((rss_mib() * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let out = work.await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (out, peak.load(Ordering::Relaxed) as f64 / 1024.0)
}

pub(crate) async fn simulate() {
    let n: usize = std::env::var("BENCH_SIMULATE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    let recording = Stopwatch::start();
    let archives = [
        record(small.path(), n / 10).await,
        record(large.path(), n).await,
    ];
    let (recorded_rate, recorded_cpu) = recording.per_item(n + n / 10);

    // The stricter version: A and B.
    let new = tempfile::tempdir().unwrap();
    std::fs::copy(guests::wasm("deny"), new.path().join("deny.wasm")).unwrap();
    std::fs::write(
        new.path().join("deny.toml"),
        format!("[settings]\nprotected = [\"{A}\", \"{B}\"]\n"),
    )
    .unwrap();
    let config = bench_config(new.path());
    let newly_denied = |n: usize| {
        (0..n)
            .filter(|i| i % 3 < 2 && i % 7 == 1) // a delete or stop on B
            .count() as u64
    };

    // Floor 1, the raw loop: every archived event read and parsed.
    let read = Stopwatch::start();
    let count = archives[1].events(0).count().await;
    assert_eq!(count, n);
    let (read_rate, read_cpu) = read.per_item(n);

    // Floor 2: wasmtime alone deciding each event (fresh instance, setup, handle).
    let alone = alone::Alone::new(
        &std::fs::read(guests::wasm("deny")).unwrap(),
        &format!("{{\"protected\":[\"{A}\",\"{B}\"]}}"),
        &config,
    );
    let sample: Vec<Event> = (0..2000).map(event).collect();
    let wasm_alone = Stopwatch::start();
    for e in &sample {
        std::hint::black_box(alone.denies(e).await);
    }
    let (alone_rate, alone_cpu) = wasm_alone.per_item(sample.len());

    let mut rows = Vec::new();
    for (archive, events) in archives.iter().zip([n / 10, n]) {
        let simulation = Simulation {
            live: Some("deny".into()),
            ..Simulation::new(
                new.path().join("deny.wasm"),
                std::time::Duration::from_secs(86_400),
            )
        };
        let sw = Stopwatch::start();
        let (report, peak) = peak_rss_during(run_simulation(&config, archive, simulation)).await;
        let report = report.unwrap();
        let (rate, cpu) = sw.per_item(events);
        assert_eq!(report.events, events as u64);
        assert_eq!(
            report.newly_denied.count,
            newly_denied(events),
            "{report:?}"
        );
        rows.push((
            events,
            rate,
            cpu,
            peak,
            report.time.p50_ms,
            report.time.p99_ms,
        ));
    }
    println!(
        "simulate: a stricter deny over the archive, against reading the archive and wasmtime alone"
    );
    println!(
        "  recording through Engine::pre with [archive]: {:.0} events/s, {:.1} µs CPU/event",
        recorded_rate, recorded_cpu
    );
    println!(
        "  {:<44} {:>10} {:>14} {:>10}",
        "", "events/s", "CPU µs/event", "peak RSS"
    );
    println!(
        "  {:<44} {:>10.0} {:>14.1}",
        format!("read the archive ({n} events, raw loop)"),
        read_rate,
        read_cpu
    );
    println!(
        "  {:<44} {:>10.0} {:>14.1}",
        "wasmtime alone, one event at a time", alone_rate, alone_cpu
    );
    for (events, rate, cpu, peak, p50, p99) in &rows {
        println!(
            "  {:<44} {:>10.0} {:>14.1} {:>7.1} MiB   ({:.2}x read + alone; hook p50 {p50:.2} ms, p99 {p99:.2} ms)",
            format!("simulate over {events} events"),
            rate,
            cpu,
            peak,
            cpu / (read_cpu + alone_cpu),
        );
    }
    println!(
        "  peak RSS over {} events against {}: {:+.1} MiB",
        n,
        n / 10,
        rows[1].3 - rows[0].3
    );
}
