//! `delivery` and `delivery-profile`: events to deliveries end to end,
//! against a raw POST loop.

use crate::measure::*;
use crate::setup::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmhooks::config::Config;
use wasmhooks::{Engine, Event};

/// Deliveries per second end to end (event in → hook → durable outbox →
/// POST → 2xx), against a raw reqwest keep-alive POST loop to the same
/// receiver at the same concurrency; then a 100k-event burst's peak memory
/// and file descriptors.
pub(crate) async fn delivery() {
    let sink = Sink::start().await;
    let body = fixture("vm.start.post");
    let concurrency = 64;
    let n = 20_000;

    // Baseline: raw reqwest, `concurrency` tasks sharing one client.
    let client = reqwest::Client::new();
    let raw = async |n: usize| {
        let done = sink.expect(n).await;
        let bodies = vec![bytes::Bytes::from(body.clone()); n];
        let clock = Stopwatch::start();
        post_all(&client, &sink.url, bodies, concurrency).await;
        done.await;
        clock.per_item(n)
    };
    raw(2_000).await; // warm-up
    let (raw_rate, raw_cpu) = raw(n).await;

    println!("delivery: post events → forward hook → SQLite outbox → POST → 200, vs raw reqwest");
    println!(
        "  raw reqwest loop, {concurrency} in flight          {raw_rate:>9.0} req/s          ({raw_cpu:.0} µs CPU each, both ends)"
    );
    // The default (a fresh instance per event), with and without fsync; then
    // the operator's choice of a warm `forward` instance (`[reuse]`).
    for (fsync, reuse) in [(false, false), (true, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Stopwatch::start();
        let wide = Some(concurrency);
        let (rate, _) = engine_burst(&sink, dir.path(), fsync, reuse, n, wide).await;
        let (_, cpu_us) = clock.per_item(n);
        let instance = if reuse { "reused" } else { "fresh " };
        println!(
            "  engine, fsync = {fsync:<5}, {instance} instance  {rate:>9.0} deliveries/s  ({:.0} % of raw; target >= 60 %; {cpu_us:.0} µs CPU each, {:.1}x raw)",
            100.0 * rate / raw_rate,
            cpu_us / raw_cpu
        );
    }

    // The default configuration (8 in flight to one receiver, fsync on):
    // the CPU per delivery must not grow with the backlog.
    let mut flat = Vec::new();
    for n in [10_000, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Stopwatch::start();
        let (rate, _) = engine_burst(&sink, dir.path(), true, false, n, None).await;
        let (_, cpu_us) = clock.per_item(n);
        flat.push(cpu_us);
        println!(
            "  engine, default config, {n:>6} events   {rate:>9.0} deliveries/s  ({cpu_us:.0} µs CPU each, {:.1}x raw)",
            cpu_us / raw_cpu
        );
    }
    println!(
        "  default config: 100k events cost {:+.0} % CPU per delivery against 10k (flat: within 20 %)",
        100.0 * (flat[1] / flat[0] - 1.0)
    );

    // A burst of 100k events: memory and descriptors stay bounded.
    let dir = tempfile::tempdir().unwrap();
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // reset VmHWM
    let before = peak_rss_mib();
    let wide = Some(concurrency);
    let (rate, fds) = engine_burst(&sink, dir.path(), false, false, 100_000, wide).await;
    let db = std::fs::metadata(dir.path().join("state/wasmhooks.db"))
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0);
    println!(
        "  100k-event burst: {rate:.0} deliveries/s; peak RSS {:.0} MiB (from {before:.0} MiB before); \
         at most {fds} open fds; database {db:.1} MiB after",
        peak_rss_mib()
    );
}

/// The delivery path alone (`BENCH_REUSE=1`: with a warm `forward`), for a
/// profiler: 50k events, and the CPU each delivery cost.
pub(crate) async fn delivery_profile() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let reuse = std::env::var_os("BENCH_REUSE").is_some();
    let n = 50_000;
    let clock = Stopwatch::start();
    let (rate, _) = engine_burst(&sink, dir.path(), false, reuse, n, Some(64)).await;
    let (_, cpu_us) = clock.per_item(n);
    println!("delivery-profile (reuse: {reuse}): {rate:.0} deliveries/s, {cpu_us:.0} µs CPU each");
}

/// Posts `n` distinct events (each its own call id) to an engine with the
/// `forward` hook pointing at the sink (`reuse`: with `[reuse]`), and waits
/// for all `n` deliveries. `wide`: the engine's delivery concurrency, all
/// of it for the one receiver; `None` keeps the defaults (64 in all, 8 per
/// receiver). Returns deliveries/s and the most file descriptors seen open
/// meanwhile. `BENCH_MEMORY=1` keeps the queue in an in-memory SQLite
/// database, to tell file I/O from the rest.
pub(crate) async fn engine_burst(
    sink: &Sink,
    dir: &Path,
    fsync: bool,
    reuse: bool,
    n: usize,
    wide: Option<usize>,
) -> (f64, usize) {
    let concurrency = wide.unwrap_or(64);
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let reuse = if reuse {
        "[reuse]\nevents = 100000\ninstances = 2\n"
    } else {
        ""
    };
    install_forward(&hooks, "forward", &sink.url, "post", reuse);
    let mut config = bench_config(&hooks);
    config.state_dir = std::env::var_os("BENCH_MEMORY")
        .is_none()
        .then(|| dir.join("state"));
    config.fsync = fsync;
    config.watch = false;
    config.dedup_window_secs = Config::default().dedup_window_secs;
    if let Some(wide) = wide {
        config.delivery.concurrency = wide;
        config.delivery.per_receiver_concurrency = wide; // one receiver: let it have all
    }
    let engine = Engine::new(config).await.unwrap();
    let mut template: serde_json::Value =
        serde_json::from_slice(&fixture("vm.start.post")).unwrap();
    let events: Arc<Vec<Event>> = Arc::new(
        (0..n)
            .map(|i| {
                template["callId"] = format!("bench-{i}").into();
                Event::from_json(&serde_json::to_vec(&template).unwrap()).unwrap()
            })
            .collect(),
    );
    let max_fds = Arc::new(AtomicUsize::new(open_fds()));
    let sampling = {
        let max_fds = max_fds.clone();
        tokio::spawn(async move {
            loop {
                max_fds.fetch_max(open_fds(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let done = sink.expect(n).await;
    let start = Instant::now();
    // As many callers as the raw loop has requests in flight: each post
    // waits for its commit, so fewer callers would measure commit latency.
    let posters: Vec<_> = (0..concurrency)
        .map(|i| {
            let (engine, events) = (engine.clone(), events.clone());
            tokio::spawn(async move {
                for event in events.iter().skip(i).step_by(concurrency) {
                    engine.post(event.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for p in posters {
        p.await.unwrap();
    }
    let posted = start.elapsed().as_secs_f64();
    done.await;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "    ({n} events: all accepted after {posted:.2} s, all delivered after {elapsed:.2} s)"
    );
    let rate = n as f64 / elapsed;
    engine.drain().await;
    sampling.abort();
    (rate, max_fds.load(Ordering::Relaxed))
}
