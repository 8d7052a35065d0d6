//! `pre-latency` and `sidecar`: through the HTTP API, against a bare round
//! trip and a minimal relay.

use crate::measure::*;
use crate::serve::serve_app;
use crate::setup::*;
use std::sync::atomic::Ordering;
use std::time::Instant;
use wasmhooks::Engine;
use wasmhooks::config::Config;

/// What a pre event costs its caller through the HTTP API, one caller
/// sending one event at a time, the durable queue with `fsync = true`:
/// with 5 Rust hooks that only decide (`deny`, protecting nothing: each
/// allows, with no delivery), then with 5 that each queue one delivery
/// (`forward`, none `wait`); each against a bare round trip (`GET
/// /healthz`) to the same server, interleaved with it in the same run.
pub(crate) async fn pre_latency() {
    let n = 2000;
    println!("pre-latency: {n} pre events, one caller, fsync = true; added over a bare round trip");
    let verdicts = |hooks: &std::path::Path, _: &str| {
        for i in 0..5 {
            std::fs::copy(
                crate::guests::wasm("deny"),
                hooks.join(format!("d{i}.wasm")),
            )
            .unwrap();
            std::fs::write(
                hooks.join(format!("d{i}.toml")),
                "[settings]\nprotected = []\nmethods = [\"vm.*\"]\n",
            )
            .unwrap();
        }
    };
    let deliveries = |hooks: &std::path::Path, url: &str| {
        for i in 0..5 {
            install_forward(hooks, &format!("f{i}"), url, "pre", "");
        }
    };
    pre_round("5 hooks, verdict only", "verdicts", n, 0, 100.0, verdicts).await;
    pre_round(
        "5 hooks, one delivery each",
        "deliveries",
        n,
        5,
        150.0,
        deliveries,
    )
    .await;
}

/// One `pre-latency` row: the hooks `install` puts in the hooks folder
/// (given the receiver's URL), each event making `deliveries` deliveries;
/// `part` names it for `PerfWindow`.
async fn pre_round(
    what: &str,
    part: &str,
    n: usize,
    deliveries: usize,
    target_p50: f64,
    install: impl Fn(&std::path::Path, &str),
) {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    install(&hooks, &sink.url);
    let mut config = bench_config(&hooks);
    config.state_dir = Some(dir.path().join("state"));
    config.fsync = true;
    config.watch = false;
    let engine = Engine::new(config).await.unwrap();
    let base = serve_app(wasmhooks::server::router(engine.clone())).await;
    let client = reqwest::Client::new();
    let mut template: serde_json::Value = serde_json::from_slice(&fixture("vm.start.pre")).unwrap();
    let mut bare = Vec::with_capacity(n);
    let mut pre = Vec::with_capacity(n);
    // Interleaved, so both see the same machine; the first 200 warm up.
    let mut clock = None;
    for i in 0..n + 200 {
        if i == 200 {
            clock = Some((
                Stopwatch::start(),
                ThreadClock::start(),
                PerfWindow::open(part),
            ));
        }
        let start = Instant::now();
        let ok = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert!(ok.status().is_success());
        ok.bytes().await.unwrap();
        let bare_time = start.elapsed();
        template["callId"] = format!("pre-{i}").into();
        let body = serde_json::to_vec(&template).unwrap();
        let start = Instant::now();
        let verdict = client
            .post(format!("{base}/v1/events"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(verdict.status().is_success());
        let verdict = verdict.bytes().await.unwrap();
        if i >= 200 {
            bare.push(bare_time);
            pre.push(start.elapsed());
        }
        if i == 0 {
            let verdict: serde_json::Value = serde_json::from_slice(&verdict).unwrap();
            assert_eq!(verdict["allowed"], true, "the hooks allow: {verdict}");
        }
    }
    let (clock, threads, window) = clock.expect("n > 0");
    let ((_, cpu_both), threads_both) = (clock.per_item(n), threads.per_item(n));
    drop(window);
    // The bare round trips alone, to take their CPU out of the pair's.
    let (clock, threads) = (Stopwatch::start(), ThreadClock::start());
    for _ in 0..n {
        let ok = client.get(format!("{base}/healthz")).send().await.unwrap();
        ok.bytes().await.unwrap();
    }
    let ((_, cpu_bare), threads_bare) = (clock.per_item(n), threads.per_item(n));
    engine.drain().await;
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let called = metrics
        .lines()
        .filter(|l| l.starts_with("wasmhooks_hook_calls_total"))
        .filter(|l| l.ends_with(&format!(" {}", n + 200)))
        .count();
    assert_eq!(called, 5, "every hook ran on every event:\n{metrics}");
    assert_eq!(
        sink.count.load(Ordering::SeqCst),
        deliveries * (n + 200),
        "every delivery sent"
    );
    let (bare50, bare99) = (percentile(&mut bare, 50.0), percentile(&mut bare, 99.0));
    let (pre50, pre99) = (percentile(&mut pre, 50.0), percentile(&mut pre, 99.0));
    println!("  {what}");
    println!("    bare round trip (GET /healthz)     p50 {bare50:>7.0} µs   p99 {bare99:>7.0} µs");
    println!("    POST /v1/events, pre               p50 {pre50:>7.0} µs   p99 {pre99:>7.0} µs");
    println!(
        "    added by the hooks                 p50 {:>7.0} µs   p99 {:>7.0} µs   (target: p50 <= {target_p50:.0} µs, p99 <= 1000 µs)",
        pre50 - bare50,
        pre99 - bare99
    );
    println!(
        "    CPU added per event (all threads)  {:>7.0} µs   (5 fresh instances: see per-event's `engine.pre` for one)",
        cpu_both - cpu_bare
    );
    // By thread: the bench's runtime runs the caller, the server and the
    // hooks; the queue's writer journals the event and commits deliveries.
    let added: Vec<String> = threads_both
        .iter()
        .map(|(name, us)| (name, us - threads_bare.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, us)| us.abs() >= 1.0)
        .map(|(name, us)| format!("{name} {us:.0}"))
        .collect();
    println!("      by thread, µs: {}", added.join(", "));
}

/// The sidecar path (`POST /v1/events` → the `forward` hook → the durable
/// queue, fsync on → POST to the receiver), with the default configuration
/// and one receiver, against a minimal relay in the same run: an axum
/// handler that takes the event and POSTs it on with reqwest (no hook, no
/// queue). CPU per delivery is this whole process's (the callers, the
/// server, the engine or relay, and the receiver), as the raw loop counts
/// both of its ends. Then a 100k-event burst: nothing lost.
pub(crate) async fn sidecar() {
    let sink = Sink::apart();
    let callers = 64;
    let n = 20_000;
    let events = |n: usize, tag: &str| {
        let mut template: serde_json::Value =
            serde_json::from_slice(&fixture("vm.start.post")).unwrap();
        (0..n)
            .map(|i| {
                template["callId"] = format!("{tag}-{i}").into();
                bytes::Bytes::from(serde_json::to_vec(&template).unwrap())
            })
            .collect::<Vec<_>>()
    };
    let relay = {
        let (client, url) = (reqwest::Client::new(), sink.url.clone());
        let forward = move |body: bytes::Bytes| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => axum::http::StatusCode::ACCEPTED,
                    _ => axum::http::StatusCode::BAD_GATEWAY,
                }
            }
        };
        let app = axum::Router::new().route("/v1/events", axum::routing::post(forward));
        serve_app(app).await
    };
    drive(&sink, &relay, events(2_000, "warm"), callers).await;
    let window = PerfWindow::open("relay");
    let (relay_rate, relay_cpu, relay_split) =
        drive(&sink, &relay, events(n, "relay"), callers).await;
    drop(window);

    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    install_forward(&hooks, "forward", &sink.url, "post", "");
    // `BENCH_CONFIG='fsync = false'`: the same run with other settings (TOML).
    let settings: Config = std::env::var("BENCH_CONFIG")
        .map(|toml| toml::from_str(&toml).expect("BENCH_CONFIG is a wasmhooks config"))
        .unwrap_or_default();
    let mut unkept = settings.clone();
    unkept.delivery.history_attempts = 0;
    unkept.delivery.history_hours = 0;
    let config = Config {
        hooks_dir: hooks.clone(),
        state_dir: Some(dir.path().join("state")),
        cache_dir: None,
        watch: false,
        ..settings
    };
    let engine = Engine::new(config).await.unwrap();
    let base = serve_app(wasmhooks::server::router(engine.clone())).await;
    drive(&sink, &base, events(2_000, "engine-warm"), callers).await;
    let transactions = wasmhooks::bench::BenchQueue::transactions();
    let window = PerfWindow::open("engine");
    let (rate, cpu, split) = drive(&sink, &base, events(n, "engine"), callers).await;
    drop(window);
    let transactions =
        (wasmhooks::bench::BenchQueue::transactions() - transactions) as f64 / n as f64;
    println!(
        "sidecar: {callers} callers POST /v1/events, default config, one receiver, vs a minimal relay"
    );
    println!(
        "  relay (axum → reqwest, no hook, no queue) {relay_rate:>8.0} deliveries/s  ({relay_cpu:.0} µs CPU each)"
    );
    println!(
        "  wasmhooks serve path, fsync on           {rate:>8.0} deliveries/s  ({cpu:.0} µs CPU each, {:.2}x the relay; target <= 1.8x, moonshot 1.5x)",
        cpu / relay_cpu
    );
    print_split(&relay_split, &split);
    println!("    queue transactions (each one fsync) per delivery            {transactions:>9.2}");
    // The same path keeping no attempt and no delivered delivery
    // (`history_attempts = 0`, `history_hours = 0`): what the history costs.
    let off = Engine::new(Config {
        hooks_dir: hooks,
        state_dir: Some(dir.path().join("state-off")),
        cache_dir: None,
        watch: false,
        ..unkept
    })
    .await
    .unwrap();
    let off_base = serve_app(wasmhooks::server::router(off.clone())).await;
    drive(&sink, &off_base, events(2_000, "off-warm"), callers).await;
    let (off_rate, off_cpu, _) = drive(&sink, &off_base, events(n, "off"), callers).await;
    println!(
        "  the same, attempt history off            {off_rate:>8.0} deliveries/s  ({off_cpu:.0} µs CPU each, {:.2}x the relay; history on costs {:+.1} µs, {:+.0} %)",
        off_cpu / relay_cpu,
        cpu - off_cpu,
        (cpu / off_cpu - 1.0) * 100.0
    );
    off.shutdown(std::time::Duration::from_secs(5)).await;
    // Tracing on: 4 spans per event (ingest, hook, commit, attempt), every
    // one exported over OTLP, and the trace context stored with each delivery.
    if let Some(traced) = crate::traced::Traced::get().await {
        traced.set(true);
        let (on_rate, on_cpu, _) = drive(&sink, &base, events(n, "traced"), callers).await;
        traced.set(false);
        println!(
            "  the same, tracing on (OTLP)              {on_rate:>8.0} deliveries/s  ({on_cpu:.0} µs CPU each, {:.2}x the relay; {:.2}x tracing off, {:+.1} µs)",
            on_cpu / relay_cpu,
            on_cpu / cpu,
            on_cpu - cpu
        );
    }
    let burst: usize = std::env::var("BENCH_BURST").map_or(100_000, |n| n.parse().unwrap());
    if burst == 0 {
        return;
    }
    let before = sink.count.load(Ordering::SeqCst);
    let (rate, cpu, _) = drive(&sink, &base, events(burst, "burst"), callers).await;
    engine.drain().await;
    let delivered = sink.count.load(Ordering::SeqCst) - before;
    assert_eq!(delivered, burst, "every accepted event delivered");
    println!(
        "  {:<40} {rate:>8.0} deliveries/s  ({cpu:.0} µs CPU each, {:.2}x the relay; all {delivered} delivered)",
        format!("{burst}-event burst"),
        cpu / relay_cpu
    );
}

/// Where each path's CPU went, by thread: the two ends (callers and
/// receiver) are the same code in both, so the rows between them are what
/// the engine costs over the relay.
fn print_split(relay: &Split, engine: &Split) {
    println!("  where it goes, µs CPU per delivery, by thread          relay  wasmhooks");
    let rows: [(&str, &[&str]); 5] = [
        ("callers (reqwest, bench-callers)", &["bench-callers"]),
        ("receiver (axum, bench-receiver)", &["bench-receiver"]),
        (
            "server runtime: HTTP, hooks, attempts (bench-engine)",
            &["bench-engine"],
        ),
        (
            "queue writer: SQLite, fsync (wasmhooks-queue)",
            &["wasmhooks-queue"],
        ),
        (
            "epoch ticker, warm pool (wasmhooks-epoch, -warm)",
            &["wasmhooks-epoch", "wasmhooks-warm"],
        ),
    ];
    let of = |split: &Split, names: &[&str]| names.iter().map(|n| split.of(n)).sum::<f64>();
    // What no row names: other threads, and threads that exited.
    let rest = |split: &Split| {
        split.exited + split.by_thread.values().sum::<f64>()
            - rows.iter().map(|(_, names)| of(split, names)).sum::<f64>()
    };
    for (what, names) in rows {
        // `+ 0.0`: an empty sum is -0.0.
        println!(
            "    {what:<52} {:>6.1} {:>9.1}",
            of(relay, names) + 0.0,
            of(engine, names) + 0.0
        );
    }
    let what = "other threads, and threads that exited";
    println!(
        "    {what:<52} {:>6.1} {:>9.1}",
        rest(relay) + 0.0,
        rest(engine) + 0.0
    );
}
