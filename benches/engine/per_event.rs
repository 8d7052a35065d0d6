//! `per-event`: a pre event through the `deny` hook against a native
//! closure and wasmtime alone; `profile`: a steady loop for a profiler.

use crate::alone;
use crate::guests;
use crate::measure::*;
use crate::setup::*;
use std::time::{Duration, Instant};
use wasmhooks::{Engine, Event};

/// A pre event through the `deny` hook (fresh instance, setup with its
/// settings, handle, which parses the event), against the same decision as a
/// native Rust closure; then throughput from one caller and from two,
/// beside the same for wasmtime alone and for native work (the floors for
/// scaling on this machine).
pub(crate) async fn per_event() {
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
    // Tracing on (every span exported over OTLP), then off again with its
    // subscriber still installed, as `serve --otlp-endpoint` has it.
    let mut traced_rows = None;
    if let Some(traced) = crate::traced::Traced::get().await {
        traced.set(true);
        let on = per_iter(n, 5, async || {
            assert!(!engine.pre(event.clone()).await.unwrap().allowed);
        })
        .await;
        traced.set(false);
        let off = per_iter(n, 5, async || {
            assert!(!engine.pre(event.clone()).await.unwrap().allowed);
        })
        .await;
        traced_rows = Some((on, off));
    }
    let alone = alone::Alone::new(
        &std::fs::read(guests::wasm("deny")).unwrap(),
        &format!("{{\"protected\":[\"{protected}\"]}}"),
        &bench_config(dir.path()),
    );
    let t_alone = per_iter(n, 5, async || {
        assert!(alone.denies(&event).await);
    })
    .await;
    let pre = {
        let (engine, event) = (engine.clone(), event.clone());
        move || {
            let (engine, event) = (engine.clone(), event.clone());
            async move { drop(engine.pre(event).await.unwrap()) }
        }
    };
    let one = throughput(1, 5 * n, pre.clone()).await;
    let two = throughput(2, 5 * n, pre).await;
    // The floor for scaling: wasmtime alone, from 1 and 2 callers, on the
    // same runtime (the machine's 2 vCPUs and their neighbours set it).
    let alone = std::sync::Arc::new(alone);
    let alone_call = {
        let (alone, event) = (alone.clone(), event.clone());
        move || {
            let (alone, event) = (alone.clone(), event.clone());
            async move { assert!(alone.denies(&event).await) }
        }
    };
    let alone_one = throughput(1, 5 * n, alone_call.clone()).await;
    let alone_two = throughput(2, 5 * n, alone_call).await;
    // And the machine's: native work of about the same CPU per call (the
    // event parsed into a `serde_json::Value` three times), no wasmtime.
    let work = {
        let bytes = std::sync::Arc::new(delete.clone());
        move || {
            let bytes = bytes.clone();
            async move {
                for _ in 0..3 {
                    std::hint::black_box(
                        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
                    );
                }
            }
        }
    };
    let native_one = throughput(1, 5 * n, work.clone()).await;
    let native_two = throughput(2, 5 * n, work).await;
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
            "({:.0}x native, {:.2}x wasmtime alone; target <= 1.2x, <= 12 µs CPU)",
            ratio(t_hook, t_native),
            ratio(t_hook, t_alone)
        ),
    );
    row(
        "the same, preinitialize = true",
        t_snapshot,
        &format!("({:.2}x without)", ratio(t_snapshot, t_hook)),
    );
    if let Some((on, off)) = traced_rows {
        row(
            "the same, tracing on (2 spans, OTLP)",
            on,
            &format!(
                "({:.2}x tracing off, +{:.2} µs)",
                ratio(on, t_hook),
                micros(on.cpu) - micros(t_hook.cpu)
            ),
        );
        row(
            "the same, tracing switched off again",
            off,
            &format!("({:.2}x before it was set up)", ratio(off, t_hook)),
        );
    }
    row(
        "engine.pre, no hook subscribed",
        t_unsubscribed,
        &format!("({:.1}x native)", ratio(t_unsubscribed, t_native)),
    );
    let ((one, one_cpu), (two, two_cpu)) = (one, two);
    let ((alone_one, alone_one_cpu), (alone_two, alone_two_cpu)) = (alone_one, alone_two);
    let ((native_one, _), (native_two, _)) = (native_one, native_two);
    println!(
        "  throughput, 1 thread                    {one:>9.0} events/s  ({one_cpu:.1} µs CPU each; wasmtime alone {alone_one:.0}/s, {alone_one_cpu:.1} µs)"
    );
    println!(
        "  throughput, 2 threads                   {two:>9.0} events/s  ({two_cpu:.1} µs CPU each, {:.2}x one thread; target >= 1.8x; wasmtime alone {alone_two:.0}/s, {alone_two_cpu:.1} µs)",
        two / one,
    );
    println!(
        "    the floors, 2 threads against 1:     wasmtime alone {:.2}x, native work {:.2}x",
        alone_two / alone_one,
        native_two / native_one
    );
}

/// Events per second from `tasks` concurrent callers of `call`, on the
/// 2-worker runtime: 1 caller keeps one thread busy, 2 keep both.
pub(crate) async fn throughput<F, R>(tasks: usize, n: u32, call: F) -> (f64, f64)
where
    F: Fn() -> R + Clone + Send + 'static,
    R: Future<Output = ()> + Send,
{
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let callers: Vec<_> = (0..tasks)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    call().await;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let events = tasks as f64 * f64::from(n);
    let cpu = (cpu_seconds() - cpu) * 1e6 / events;
    (events / start.elapsed().as_secs_f64(), cpu)
}

/// Three seconds of pre events through the deny hook, for profiling.
pub(crate) async fn profile_loop() {
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
    // A pool of 2 instances: one caller needs no more, and valgrind cannot
    // reserve the address space of the default 144 (it would fall back to
    // on-demand allocation, which is not what runs).
    let mut config = bench_config(dir.path());
    config.max_concurrent_calls = 2;
    config.max_warm_instances = 0;
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
    // Not both: valgrind cannot reserve two pools' address space.
    let engine = match alone {
        Some(_) => None,
        None => Some(Engine::new(config.clone()).await.unwrap()),
    };
    // `BENCH_TRACE=1`: with tracing on (every span exported over OTLP).
    if std::env::var_os("BENCH_TRACE").is_some() {
        let traced = crate::traced::Traced::get().await;
        traced.expect("no WASMHOOKS_LOG with BENCH_TRACE").set(true);
    }
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut n = 0u64;
    while events.map_or(start.elapsed() < Duration::from_secs(3), |events| {
        n < events
    }) {
        match &alone {
            Some(alone) => assert!(alone.denies(&event).await),
            None => drop(engine.as_ref().unwrap().pre(event.clone()).await.unwrap()),
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
