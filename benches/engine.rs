//! Engine benchmarks, each against a baseline measured in the same run.
//!
//! `cargo bench --bench engine` runs them all; name sections to run only
//! those, e.g. `cargo bench --bench engine -- per-event`.
//! Figures go in BENCHMARKS.md.

#[path = "../tests/support/guests.rs"]
mod guests;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmhooks::config::Config;
use wasmhooks::{Engine, Event};

fn main() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    if let Ok(filter) = std::env::var("WASMHOOKS_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
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
    if wanted("languages") {
        on_worker(&runtime, languages());
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

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(guests::root().join(format!("tests/fixtures/xo/{name}.json"))).unwrap()
}

/// The median time of `f` over `batches` batches of `n` calls; and the
/// process's CPU time (every thread) per call over all of them, which the
/// machine's other tenants move less than time.
async fn per_iter<F: AsyncFnMut()>(n: u32, batches: usize, mut f: F) -> PerIter {
    for _ in 0..n / 10 {
        f().await; // warm-up
    }
    let mut times = Vec::with_capacity(batches);
    let cpu = cpu_seconds();
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..n {
            f().await;
        }
        times.push(start.elapsed() / n);
    }
    let cpu = Duration::from_secs_f64((cpu_seconds() - cpu) / (n as usize * batches) as f64);
    times.sort();
    PerIter {
        time: times[batches / 2],
        cpu,
    }
}

#[derive(Clone, Copy, Default)]
struct PerIter {
    time: Duration,
    cpu: Duration,
}

fn bench_config(dir: &Path) -> Config {
    Config {
        hooks_dir: dir.to_owned(),
        cache_dir: None,
        state_dir: None,
        // These benches send the same event over and over: accept every copy.
        dedup_window_secs: 0,
        ..Config::default()
    }
}

fn with_cache(dir: &Path, cache: &Path) -> Config {
    Config {
        cache_dir: Some(cache.to_owned()),
        ..bench_config(dir)
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A `misbehave` hook in deny mode: every pre event is denied with the
/// version mark as the reason, so a verdict says which version decided it.
const DENY_VERSION: &str = "[settings]\nmode = \"deny\"\n";

/// Time from renaming version `k` into place to the first event it decides.
/// An event is sent each time the engine announces a change (rather than
/// in a busy loop that would compete with the compiler for the 2 cores).
async fn rename_to_first_event(engine: &Engine, dir: &Path, k: u32, event: &[u8]) -> Duration {
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
async fn reload() {
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

/// Engine::new with 100 distinct hooks, without and with the disk cache.
async fn cold_start() {
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
async fn many_hooks() {
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

/// A pre event through the `deny` hook (fresh instance, setup with its
/// settings, handle, which parses the event), against the same decision as a
/// native Rust closure; then throughput from one caller and from two.
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
    // The same hook with `preinitialize = true`, in an engine of its own.
    let snapshot_dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::wasm("deny"), snapshot_dir.path().join("deny.wasm")).unwrap();
    std::fs::write(
        snapshot_dir.path().join("deny.toml"),
        format!("preinitialize = true\n[settings]\nprotected = [\"{protected}\"]\n"),
    )
    .unwrap();
    let snapshot = Engine::new(bench_config(snapshot_dir.path()))
        .await
        .unwrap();
    assert_eq!(snapshot.hooks()[0].preinitialized, Some(true));
    let delete = fixture("vm.delete.pre");
    let start = fixture("vm.start.pre");

    // The deny hook's logic as a native function: typed serde of the fields
    // it reads, the protected-list check, the reason.
    #[derive(serde::Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        method: &'a str,
        #[serde(borrow)]
        params: Params<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        id: Option<&'a str>,
    }
    let protected_list = [protected.to_owned()];
    let native = |bytes: &[u8]| {
        let event: Payload = serde_json::from_slice(bytes).unwrap();
        let vetoed = matches!(event.method, "vm.delete" | "vm.stop")
            && event
                .params
                .id
                .is_some_and(|id| protected_list.iter().any(|p| p == id));
        let reason = vetoed.then(|| {
            format!(
                "VM {} is protected: {} refused",
                event.params.id.unwrap(),
                event.method
            )
        });
        std::hint::black_box(reason)
    };
    let n = 2000;
    let t_native = per_iter(n * 10, 5, async || {
        native(&delete);
    })
    .await;
    // Events are parsed once: this measures the hook, which parses the payload itself.
    let event = Event::from_json(&delete).unwrap();
    let unsubscribed = Event::from_json(&start).unwrap();
    let t_hook = per_iter(n, 5, async || {
        assert!(!engine.pre(event.clone()).await.unwrap().allowed);
    })
    .await;
    let t_snapshot = per_iter(n, 5, async || {
        assert!(!snapshot.pre(event.clone()).await.unwrap().allowed);
    })
    .await;
    let t_unsubscribed = per_iter(n * 10, 5, async || {
        assert!(engine.pre(unsubscribed.clone()).await.unwrap().allowed);
    })
    .await;
    let alone = alone::Alone::new(
        &std::fs::read(guests::wasm("deny")).unwrap(),
        &format!("{{\"protected\":[\"{protected}\"]}}"),
        &bench_config(dir.path()),
    );
    let t_alone = per_iter(n, 5, async || {
        assert!(alone.denies(&event).await);
    })
    .await;
    let one = throughput(&engine, &event, 1, 5 * n).await;
    let two = throughput(&engine, &event, 2, 5 * n).await;
    println!("per-event: a pre event decided by the deny hook vs a native Rust closure");
    println!("  {:<40} {:>9} {:>12}", "", "time", "CPU (2 thr.)");
    let row = |what: &str, t: PerIter, vs: &str| {
        println!(
            "  {what:<40} {:>6.2} µs {:>9.2} µs  {vs}",
            micros(t.time),
            micros(t.cpu)
        )
    };
    let ratio = |a: PerIter, b: PerIter| a.cpu.as_secs_f64() / b.cpu.as_secs_f64();
    row("native closure (parse + decide)", t_native, "");
    row(
        "wasmtime alone (fresh instance)",
        t_alone,
        &format!("({:.0}x native)", ratio(t_alone, t_native)),
    );
    row(
        "engine.pre, deny hook (fresh instance)",
        t_hook,
        &format!(
            "({:.0}x native, {:.2}x wasmtime alone; target <= 10 µs)",
            ratio(t_hook, t_native),
            ratio(t_hook, t_alone)
        ),
    );
    row(
        "the same, preinitialize = true",
        t_snapshot,
        &format!("({:.2}x without)", ratio(t_snapshot, t_hook)),
    );
    row(
        "engine.pre, no hook subscribed",
        t_unsubscribed,
        &format!("({:.1}x native)", ratio(t_unsubscribed, t_native)),
    );
    println!("  throughput, 1 thread                    {one:>9.0} events/s");
    println!(
        "  throughput, 2 threads                   {two:>9.0} events/s  ({:.2}x one thread; target >= 1.8x)",
        two / one
    );
}

/// Events per second through `engine.pre` from `tasks` concurrent callers,
/// on the 2-worker runtime: 1 caller keeps one thread busy, 2 keep both.
async fn throughput(engine: &Engine, event: &Event, tasks: usize, n: u32) -> f64 {
    let start = Instant::now();
    let callers: Vec<_> = (0..tasks)
        .map(|_| {
            let (engine, event) = (engine.clone(), event.clone());
            tokio::spawn(async move {
                for _ in 0..n {
                    engine.pre(event.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    (tasks as f64 * f64::from(n)) / start.elapsed().as_secs_f64()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Baseline for the reload figures: compiling the same component with
/// wasmtime directly, median of 5.
fn raw_compile(epoch_interruption: bool) -> Duration {
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

/// Three seconds of pre events through the deny hook, for profiling.
async fn profile_loop() {
    let dir = tempfile::tempdir().unwrap();
    // `BENCH_HOOK=FILE.wasm` (beside its FILE.toml): that hook instead.
    match std::env::var_os("BENCH_HOOK").map(std::path::PathBuf::from) {
        Some(wasm) => {
            std::fs::copy(&wasm, dir.path().join("hook.wasm")).unwrap();
            std::fs::copy(wasm.with_extension("toml"), dir.path().join("hook.toml")).unwrap();
        }
        None => {
            std::fs::copy(guests::wasm("deny"), dir.path().join("deny.wasm")).unwrap();
            std::fs::write(
                dir.path().join("deny.toml"),
                "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n",
            )
            .unwrap();
        }
    }
    // A pool of 8 instances: one caller needs no more, and valgrind cannot
    // reserve the address space of the default 144 (it would fall back to
    // on-demand allocation, which is not what runs).
    let mut config = bench_config(dir.path());
    config.max_concurrent_calls = 8;
    config.max_warm_instances = 0;
    let engine = Engine::new(config.clone()).await.unwrap();
    let event = Event::from_json(&fixture("vm.delete.pre")).unwrap();
    // `BENCH_EVENTS=N`: exactly N events, for `valgrind --tool=callgrind`
    // (instructions per event: the difference of two runs' totals over the
    // difference of their N, which cancels the start-up's compiling).
    let events: Option<u64> = std::env::var("BENCH_EVENTS")
        .ok()
        .map(|n| n.parse().unwrap());
    // `BENCH_ALONE=1`: the deny hook run by wasmtime alone (see `alone`).
    let alone = std::env::var_os("BENCH_ALONE").map(|_| {
        alone::Alone::new(
            &std::fs::read(guests::wasm("deny")).unwrap(),
            "{\"protected\":[\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]}",
            &config,
        )
    });
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut n = 0u64;
    while events.map_or(start.elapsed() < Duration::from_secs(3), |events| {
        n < events
    }) {
        match &alone {
            Some(alone) => assert!(alone.denies(&event).await),
            None => drop(engine.pre(event.clone()).await.unwrap()),
        }
        n += 1;
    }
    let (wall, cpu) = (start.elapsed(), cpu_seconds() - cpu);
    println!(
        "profile: {n} events, {:.2} µs each, {:.2} µs CPU each",
        micros(wall) / n as f64,
        cpu * 1e6 / n as f64
    );
}

/// A local receiver that answers 200 and counts, for the delivery section.
struct Sink {
    url: String,
    count: Arc<AtomicUsize>,
    reached: Arc<tokio::sync::Notify>,
    target: Arc<AtomicUsize>,
}

impl Sink {
    async fn start() -> Sink {
        let count = Arc::new(AtomicUsize::new(0));
        let reached = Arc::new(tokio::sync::Notify::new());
        let target = Arc::new(AtomicUsize::new(usize::MAX));
        let (c, r, t) = (count.clone(), reached.clone(), target.clone());
        let app = axum::Router::new().fallback(move || {
            let (c, r, t) = (c.clone(), r.clone(), t.clone());
            async move {
                if c.fetch_add(1, Ordering::SeqCst) + 1 == t.load(Ordering::SeqCst) {
                    r.notify_one();
                }
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sink", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink {
            url,
            count,
            reached,
            target,
        }
    }

    /// Resolves once `n` more requests than now have arrived.
    async fn expect(&self, n: usize) -> impl Future<Output = ()> + use<> {
        let target = self.count.load(Ordering::SeqCst) + n;
        self.target.store(target, Ordering::SeqCst);
        let (reached, count) = (self.reached.clone(), self.count.clone());
        async move {
            while count.load(Ordering::SeqCst) < target {
                let _ = tokio::time::timeout(Duration::from_millis(50), reached.notified()).await;
            }
        }
    }
}

/// Peak resident memory (VmHWM) of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system) this process has used so far, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the
    // 12th, stime the 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Deliveries per second end to end (event in → hook → durable outbox →
/// POST → 2xx), against a raw reqwest keep-alive POST loop to the same
/// receiver at the same concurrency; then a 100k-event burst's peak memory
/// and file descriptors.
async fn delivery() {
    let sink = Sink::start().await;
    let body = fixture("vm.start.post");
    let concurrency = 64;
    let n = 20_000;

    // Baseline: raw reqwest, `concurrency` tasks sharing one client.
    let client = reqwest::Client::new();
    let raw = async |n: usize| {
        let done = sink.expect(n).await;
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let left = Arc::new(AtomicUsize::new(n));
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, url, body) = (client.clone(), sink.url.clone(), body.clone());
                let left = left.clone();
                tokio::spawn(async move {
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                        .is_ok()
                    {
                        let r = client.post(&url).body(body.clone()).send().await.unwrap();
                        assert!(r.status().is_success());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        done.await;
        let cpu_us = 1e6 * (cpu_seconds() - cpu) / n as f64;
        (n as f64 / start.elapsed().as_secs_f64(), cpu_us)
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
        let cpu = cpu_seconds();
        let wide = Some(concurrency);
        let (rate, _) = engine_burst(&sink, dir.path(), fsync, reuse, n, wide).await;
        let cpu_us = 1e6 * (cpu_seconds() - cpu) / n as f64;
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
        let cpu = cpu_seconds();
        let (rate, _) = engine_burst(&sink, dir.path(), true, false, n, None).await;
        let cpu_us = 1e6 * (cpu_seconds() - cpu) / n as f64;
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
async fn delivery_profile() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let reuse = std::env::var_os("BENCH_REUSE").is_some();
    let n = 50_000;
    let cpu = cpu_seconds();
    let (rate, _) = engine_burst(&sink, dir.path(), false, reuse, n, Some(64)).await;
    let cpu_us = 1e6 * (cpu_seconds() - cpu) / n as f64;
    println!("delivery-profile (reuse: {reuse}): {rate:.0} deliveries/s, {cpu_us:.0} µs CPU each");
}

/// Posts `n` distinct events (each its own call id) to an engine with the
/// `forward` hook pointing at the sink (`reuse`: with `[reuse]`), and waits
/// for all `n` deliveries. `wide`: the engine's delivery concurrency, all
/// of it for the one receiver; `None` keeps the defaults (64 in all, 8 per
/// receiver). Returns deliveries/s and the most file descriptors seen open
/// meanwhile. `BENCH_MEMORY=1` keeps the queue in an in-memory SQLite
/// database, to tell file I/O from the rest.
async fn engine_burst(
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

/// Per-event cost of the same hook in each language, with a fresh instance
/// per event and with `[reuse]` (components only), against the Rust example
/// in the same run. Pre events go through
/// `engine.pre`; post events through `engine.post` (which also commits to an
/// in-memory outbox). The `deny` examples veto a protected VM; `slack` and
/// `forward` each queue one delivery to a local sink; `filter` skips a
/// successful operation.
async fn languages() {
    let sink = Sink::start().await;
    let deny = "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n".to_owned();
    let deny_command = format!(
        "{deny}[subscription]\nmethods = [\"vm.delete\", \"vm.stop\"]\nphases = [\"pre\"]\n"
    );
    let to_sink = format!(
        "allow_hosts = [\"127.0.0.1\"]\n[settings]\nurl = \"{}\"\n",
        sink.url
    );
    let forward_rust = format!("{to_sink}methods = [\"vm.*\"]\nphases = [\"post\"]\n");
    let filter_zig = format!("{to_sink}[subscription]\nmethods = [\"*\"]\nphases = [\"post\"]\n");
    println!(
        "languages: CPU per event (all threads; the same hook in Rust = 1x; target: fresh <= 5x reused)"
    );
    type Build = fn() -> std::path::PathBuf;
    let cases: [(&str, &str, Build, &str, &str); 10] = [
        (
            "deny",
            "Rust",
            || guests::wasm("deny"),
            &deny,
            "vm.delete.pre",
        ),
        (
            "deny",
            "JavaScript (QuickJS)",
            || guests::example("js", &["jco"]),
            &deny,
            "vm.delete.pre",
        ),
        (
            "deny",
            "AssemblyScript (cmd)",
            || guests::example("assemblyscript", &["asc"]),
            &deny_command,
            "vm.delete.pre",
        ),
        (
            "slack",
            "Rust",
            || guests::wasm("slack"),
            &to_sink,
            "vm.start.pre",
        ),
        (
            "slack",
            "Python",
            || guests::example("python", &["componentize-py"]),
            &to_sink,
            "vm.start.pre",
        ),
        (
            "slack",
            "Go",
            || guests::example("go", &["go", "wit-bindgen", "wasm-tools"]),
            &to_sink,
            "vm.start.pre",
        ),
        (
            "forward",
            "Rust",
            || guests::wasm("forward"),
            &forward_rust,
            "vm.start.post",
        ),
        (
            "forward",
            "C",
            || guests::example("c", &["clang", "wit-bindgen", "wasm-tools"]),
            &to_sink,
            "vm.start.post",
        ),
        (
            "filter",
            "Rust",
            || guests::wasm("filter"),
            &to_sink,
            "vm.start.post",
        ),
        (
            "filter",
            "Zig (cmd)",
            || guests::example("zig", &["zig"]),
            &filter_zig,
            "vm.start.post",
        ),
    ];
    println!(
        "  {:<8} {:<22} {:>10} {:>8} {:>11} {:>14}  {:>7}",
        "hook", "language", "fresh", "vs Rust", "reused", "fresh/reused", "size"
    );
    let mut rust = Duration::ZERO;
    for (hook, lang, wasm, toml, event) in cases {
        let wasm = wasm();
        let event = Event::from_json(&fixture(event)).unwrap();
        let n = if lang == "Rust" { 2_000 } else { 200 };
        // Reuse is for components; a WASI command runs once per instance,
        // and the engine refuses it for Go (see `built_by_go`).
        let modes: &[bool] = if toml.contains("[subscription]") || lang == "Go" {
            &[false]
        } else {
            &[false, true]
        };
        let mut per = [None, None];
        for &reuse in modes {
            let dir = tempfile::tempdir().unwrap();
            std::fs::copy(&wasm, dir.path().join(format!("{hook}.wasm"))).unwrap();
            let toml = if reuse {
                format!("{toml}[reuse]\nevents = 100000\n")
            } else {
                toml.to_owned()
            };
            std::fs::write(dir.path().join(format!("{hook}.toml")), toml).unwrap();
            let engine = Engine::new(bench_config(dir.path())).await.unwrap();
            assert!(
                engine.hooks()[0].last_error.is_none(),
                "{lang} {hook}: {:?}",
                engine.hooks()[0].last_error
            );
            per[reuse as usize] = Some(
                per_iter(n, 5, async || {
                    if event.phase() == wasmhooks::Phase::Pre {
                        engine.pre(event.clone()).await.unwrap();
                    } else {
                        engine.post(event.clone()).await.unwrap();
                    }
                })
                .await,
            );
            let status = &engine.hooks()[0];
            assert_eq!(
                status.errors, 0,
                "{lang} {hook} (reuse: {reuse}) failed on its events: {:?}",
                status.last_error
            );
            engine.drain().await;
        }
        let (fresh, reused) = (per[0].unwrap().cpu, per[1].map(|p| p.cpu));
        if lang == "Rust" {
            rust = fresh;
        }
        let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        let reused = reused
            .map(|r| {
                format!(
                    "{:>8.1} µs {:>13.1}x",
                    micros(r),
                    fresh.as_secs_f64() / r.as_secs_f64()
                )
            })
            .unwrap_or_else(|| format!("{:>11} {:>14}", "-", "-"));
        println!(
            "  {hook:<8} {lang:<22} {:>7.1} µs {:>7.1}x {reused}  {size:>5.2} MB",
            micros(fresh),
            fresh.as_secs_f64() / rust.as_secs_f64()
        );
    }
}

/// Installs the `forward` hook as `name` in `hooks`, sending `vm.*` events
/// of `phase` to `url`, with `extra` appended to its settings file.
fn install_forward(hooks: &Path, name: &str, url: &str, phase: &str, extra: &str) {
    std::fs::copy(guests::wasm("forward"), hooks.join(format!("{name}.wasm"))).unwrap();
    std::fs::write(
        hooks.join(format!("{name}.toml")),
        format!(
            "allow_hosts = [\"127.0.0.1\"]\n[settings]\nurl = \"{url}\"\nmethods = [\"vm.*\"]\nphases = [\"{phase}\"]\n{extra}"
        ),
    )
    .unwrap();
}

/// The `p`-th percentile of `times` (sorted in place), in µs.
fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 * p / 100.0) as usize).min(times.len() - 1);
    micros(times[i])
}

/// What a pre event costs its caller through the HTTP API: 5 Rust hooks
/// (`forward`, one delivery each, none `wait`), the durable queue with
/// `fsync = true`, one caller sending one event at a time; against a bare
/// round trip (`GET /healthz`) to the same server, in the same run.
async fn pre_latency() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for i in 0..5 {
        install_forward(&hooks, &format!("f{i}"), &sink.url, "pre", "");
    }
    let mut config = bench_config(&hooks);
    config.state_dir = Some(dir.path().join("state"));
    config.fsync = true;
    config.watch = false;
    let engine = Engine::new(config).await.unwrap();
    let base = serve_app(wasmhooks::server::router(engine.clone())).await;
    let client = reqwest::Client::new();
    let mut template: serde_json::Value = serde_json::from_slice(&fixture("vm.start.pre")).unwrap();
    let n = 2000;
    let mut bare = Vec::with_capacity(n);
    let mut pre = Vec::with_capacity(n);
    // Interleaved, so both see the same machine; the first 200 warm up.
    for i in 0..n + 200 {
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
        verdict.bytes().await.unwrap();
        if i >= 200 {
            bare.push(bare_time);
            pre.push(start.elapsed());
        }
    }
    engine.drain().await;
    assert_eq!(
        sink.count.load(Ordering::SeqCst),
        5 * (n + 200),
        "every delivery sent"
    );
    let (bare50, bare99) = (percentile(&mut bare, 50.0), percentile(&mut bare, 99.0));
    let (pre50, pre99) = (percentile(&mut pre, 50.0), percentile(&mut pre, 99.0));
    println!("pre-latency: {n} pre events, one caller, 5 forward hooks (none wait), fsync = true");
    println!("  bare round trip (GET /healthz)       p50 {bare50:>7.0} µs   p99 {bare99:>7.0} µs");
    println!("  POST /v1/events, pre, 5 hooks        p50 {pre50:>7.0} µs   p99 {pre99:>7.0} µs");
    println!(
        "  added by the hooks                   p50 {:>7.0} µs   p99 {:>7.0} µs   (target: p50 <= 100 µs, p99 <= 1000 µs)",
        pre50 - bare50,
        pre99 - bare99
    );
}

/// Serves `app` on a loopback port the way `wasmhooks serve` does; returns
/// its base URL.
async fn serve_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let http = wasmhooks::config::HttpConfig::default();
        wasmhooks::server::serve(listener, app, &http, std::future::pending()).await
    });
    base
}

/// The sidecar path (`POST /v1/events` → the `forward` hook → the durable
/// queue, fsync on → POST to the receiver), with the default configuration
/// and one receiver, against a minimal relay in the same run: an axum
/// handler that takes the event and POSTs it on with reqwest (no hook, no
/// queue). CPU per delivery is this whole process's (the callers, the
/// server, the engine or relay, and the receiver), as the raw loop counts
/// both of its ends. Then a 100k-event burst: nothing lost.
async fn sidecar() {
    let sink = Sink::start().await;
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
    let (relay_rate, relay_cpu) = drive(&sink, &relay, events(n, "relay"), callers).await;

    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    install_forward(&hooks, "forward", &sink.url, "post", "");
    // `BENCH_CONFIG='fsync = false'`: the same run with other settings (TOML).
    let settings: Config = std::env::var("BENCH_CONFIG")
        .map(|toml| toml::from_str(&toml).expect("BENCH_CONFIG is a wasmhooks config"))
        .unwrap_or_default();
    let config = Config {
        hooks_dir: hooks,
        state_dir: Some(dir.path().join("state")),
        cache_dir: None,
        watch: false,
        ..settings
    };
    let engine = Engine::new(config).await.unwrap();
    let base = serve_app(wasmhooks::server::router(engine.clone())).await;
    drive(&sink, &base, events(2_000, "engine-warm"), callers).await;
    let (rate, cpu) = drive(&sink, &base, events(n, "engine"), callers).await;
    println!(
        "sidecar: {callers} callers POST /v1/events, default config, one receiver, vs a minimal relay"
    );
    println!(
        "  relay (axum → reqwest, no hook, no queue) {relay_rate:>8.0} deliveries/s  ({relay_cpu:.0} µs CPU each)"
    );
    println!(
        "  wasmhooks serve path, fsync on           {rate:>8.0} deliveries/s  ({cpu:.0} µs CPU each, {:.2}x the relay; target <= 1.5x)",
        cpu / relay_cpu
    );
    let burst: usize = std::env::var("BENCH_BURST").map_or(100_000, |n| n.parse().unwrap());
    if burst == 0 {
        return;
    }
    let before = sink.count.load(Ordering::SeqCst);
    let (rate, cpu) = drive(&sink, &base, events(burst, "burst"), callers).await;
    engine.drain().await;
    let delivered = sink.count.load(Ordering::SeqCst) - before;
    assert_eq!(delivered, burst, "every accepted event delivered");
    println!(
        "  {:<40} {rate:>8.0} deliveries/s  ({cpu:.0} µs CPU each, {:.2}x the relay; all {delivered} delivered)",
        format!("{burst}-event burst"),
        cpu / relay_cpu
    );
}

/// Posts `bodies` to `base`/v1/events from `callers` tasks and waits until
/// the sink has had as many deliveries; returns deliveries/s and the CPU
/// per delivery (µs).
async fn drive(sink: &Sink, base: &str, bodies: Vec<bytes::Bytes>, callers: usize) -> (f64, f64) {
    let n = bodies.len();
    let bodies = Arc::new(bodies);
    let client = reqwest::Client::new();
    let done = sink.expect(n).await;
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (client, bodies, url) =
                (client.clone(), bodies.clone(), format!("{base}/v1/events"));
            tokio::spawn(async move {
                for body in bodies.iter().skip(i).step_by(callers) {
                    let r = client.post(&url).body(body.clone()).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.await;
    let cpu_us = 1e6 * (cpu_seconds() - cpu) / n as f64;
    (n as f64 / start.elapsed().as_secs_f64(), cpu_us)
}

/// The floor under `engine.pre`: the same component run by wasmtime alone,
/// a fresh instance per event, `setup` then `handle`, in a store configured
/// as the engine configures its own (pooling allocator, memory settings,
/// async calls, epoch deadline), with nothing else: no slot or CPU permit,
/// no task, no limits, no outcome checks, no verdict.
mod alone {
    use ::wasmhooks::{Event, Phase};
    use wasmtime::component::{HasSelf, Linker, ResourceTable};
    use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    mod bindings {
        wasmtime::component::bindgen!({
            path: "wit",
            world: "hook",
            exports: { default: async },
        });
    }
    use bindings::wasmhooks::hook::types as wit;
    use bindings::{Hook, HookImports, HookPre};

    pub struct State {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl wit::Host for State {}

    impl HookImports for State {
        fn log(&mut self, _: wit::Level, _: String) {}
    }

    pub struct Alone {
        engine: Engine,
        pre: HookPre<State>,
        settings: String,
    }

    impl Alone {
        /// With the pool an engine of `engine` settings has.
        pub fn new(wasm: &[u8], settings: &str, engine: &::wasmhooks::config::Config) -> Alone {
            // Keep in step with `Sandbox::new` (src/sandbox/mod.rs).
            let instances = engine.max_concurrent_calls + engine.max_warm_instances;
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(instances)
                .total_core_instances(instances * 8)
                .total_memories(instances * 2)
                .total_tables(instances * 4)
                .total_stacks(instances)
                .max_memory_size(engine.limits.max_memory_mib as usize * 1024 * 1024)
                .linear_memory_keep_resident(2 << 20)
                .table_keep_resident(64 << 10)
                .async_stack_keep_resident(128 << 10)
                .pagemap_scan(wasmtime::Enabled::Auto);
            let mut config = Config::new();
            config
                .epoch_interruption(true)
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            let engine = Engine::new(&config).unwrap();
            let component = wasmtime::component::Component::new(&engine, wasm).unwrap();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
            Hook::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).unwrap();
            let pre = HookPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
            Alone {
                engine,
                pre,
                settings: settings.to_owned(),
            }
        }

        /// Whether the hook vetoed `event`.
        pub async fn denies(&self, event: &Event) -> bool {
            let state = State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            };
            let mut store = Store::new(&self.engine, state);
            store.set_epoch_deadline(1_000);
            let hook = self.pre.instantiate_async(&mut store).await.unwrap();
            hook.call_setup(&mut store, &self.settings)
                .await
                .unwrap()
                .unwrap();
            let event = wit::Event {
                call_id: event.call_id().to_owned(),
                phase: match event.phase() {
                    Phase::Pre => wit::Phase::Pre,
                    Phase::Post => wit::Phase::Post,
                    Phase::Observed => wit::Phase::Observed,
                },
                method: event.method().to_owned(),
                timestamp_ms: event.timestamp_ms(),
                payload: event.payload().to_owned(),
            };
            let outcome = hook.call_handle(&mut store, &event).await.unwrap().unwrap();
            outcome.deny.is_some()
        }
    }
}
