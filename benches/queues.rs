//! The queue backends compared, in one run against one receiver: `wasmhooks
//! serve` processes on SQLite, and on NATS JetStream with 1, 2 and 3
//! engines sharing it. Prints deliveries/s and CPU per delivery (each
//! engine's own, and nats-server's), with ratios to SQLite.
//!
//! Two sections. "Saturated" posts as fast as the engines take events: it
//! gives deliveries/s, but on 2 cores three engines, nats-server and this
//! process compete, so every CPU figure grows with the number of busy
//! processes. "Paced" offers the same events per second to each engine in
//! every row, below what the cores can do: each engine then does the same
//! work per second whether it is alone or one of three, and its CPU per
//! delivery shows whether sharing the queue costs it anything.
//!
//! `cargo bench --bench queues` (needs nats-server, which
//! `scripts/install-guest-toolchains.sh` installs). `BENCH_EVENTS` sets the
//! events per saturated row (6000; a paced row has a third of it per
//! engine), `BENCH_PACE` the paced events per second per engine (400),
//! `BENCH_HISTORY=0` turns attempt history off (on, as by default).
//! Figures go in BENCHMARKS.md.

#[allow(dead_code)] // the benchmark uses a part
#[path = "../tests/support/guests.rs"]
mod guests;
#[path = "../tests/support/nats.rs"]
mod nats_server;
#[path = "../tests/support/serve.rs"]
mod serve;
#[path = "../tests/support/sink.rs"]
mod sink;

use futures::StreamExt;
use serve::Serve;
use sink::Sink;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(queues());
}

/// User plus system CPU time of process `pid`, in seconds.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which is in parentheses): utime is the
    // 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Read and write system calls made so far by process `pid` (sockets
/// included), from `/proc/PID/io`.
fn syscalls_of(pid: u32) -> f64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .filter_map(|l| l.strip_prefix("syscr: ").or(l.strip_prefix("syscw: ")))
        .filter_map(|n| n.trim().parse::<f64>().ok())
        .sum()
}

/// How a row offers its events.
#[derive(Clone, Copy)]
enum Load {
    /// As fast as the engines take them, 64 in flight.
    Saturate,
    /// At this many events per second per engine, whatever the number of
    /// engines, so that each engine does the same work per second in every
    /// row and the cores are never all busy.
    Paced(usize),
}

/// Posts `n` events round-robin to `addrs`.
async fn post(addrs: &[SocketAddr], tag: &str, n: usize, load: Load) {
    let client = reqwest::Client::new();
    let event: serde_json::Value = serde_json::from_slice(
        &std::fs::read(guests::root().join("tests/fixtures/xo/vm.start.post.json")).unwrap(),
    )
    .unwrap();
    let requests = futures::stream::iter(0..n).map(|i| {
        let mut event = event.clone();
        event["callId"] = format!("{tag}-{i}").into();
        let request = client
            .post(format!("http://{}/v1/events", addrs[i % addrs.len()]))
            .json(&event)
            .send();
        async move {
            let status = request.await.expect("the engine answers").status();
            assert_eq!(status, 202);
        }
    });
    match load {
        Load::Saturate => {
            requests.buffer_unordered(64).collect::<Vec<()>>().await;
        }
        Load::Paced(per_engine) => {
            // Every 10 ms, the events of the next 10 ms, each in its own task
            // so that none waits for another.
            let per_tick = (per_engine * addrs.len()).div_ceil(100);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut tasks = Vec::with_capacity(n);
            let mut requests = std::pin::pin!(requests.chunks(per_tick));
            while let Some(chunk) = requests.next().await {
                tick.tick().await;
                tasks.extend(chunk.into_iter().map(tokio::spawn));
            }
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
}

/// One engine's part of a row.
struct PerEngine {
    /// Deliveries it made.
    made: f64,
    /// Its CPU per delivery it made (µs).
    cpu_us: f64,
    /// Its read and write system calls per delivery it made.
    syscalls: f64,
}

struct Row {
    rate: f64,
    /// Engine CPU per delivery, all engines (µs).
    engines_us: f64,
    per_engine: Vec<PerEngine>,
    /// nats-server's CPU per delivery (µs).
    nats_us: f64,
    /// NATS protocol messages per delivery, both ways, all engines.
    nats_msgs: f64,
}

/// NATS messages the engines sent and received so far (from `/connz`).
fn engine_msgs(server: Option<&nats_server::NatsServer>) -> f64 {
    let Some(body) = server.and_then(|s| s.monitor_get("/connz")) else {
        return 0.0;
    };
    let connz: serde_json::Value = serde_json::from_str(&body).unwrap();
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == "wasmhooks")
        .map(|c| c["in_msgs"].as_f64().unwrap_or(0.0) + c["out_msgs"].as_f64().unwrap_or(0.0))
        .sum()
}

async fn row(sink: &Sink, dir: &Path, engines: usize, nats: bool, n: usize, load: Load) -> Row {
    let server = nats.then(nats_server::NatsServer::start);
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(
        hooks.join("hook.toml"),
        format!("[settings]\nmode = \"echo\"\nurl = \"{}\"\n", sink.url),
    )
    .unwrap();
    std::fs::copy(guests::wasm("misbehave"), hooks.join("hook.wasm")).unwrap();
    let queue = match &server {
        Some(s) => format!("[queue.nats]\nurl = \"{}\"\n", s.url),
        None => String::new(),
    };
    let config = dir.join("engine.toml");
    // `BENCH_HISTORY=0`: keep no attempt and no delivered delivery.
    let history = match std::env::var("BENCH_HISTORY").as_deref() {
        Ok("0") => "history_attempts = 0\nhistory_hours = 0\n",
        _ => "",
    };
    std::fs::write(
        &config,
        format!("fsync = false\n{queue}[delivery]\nallow_hosts = [\"127.0.0.1\"]\n{history}"),
    )
    .unwrap();
    let serves: Vec<Serve> = (0..engines)
        .map(|i| Serve::start(&hooks, &dir.join(format!("state{i}")), &config))
        .collect();
    let addrs: Vec<SocketAddr> = serves.iter().map(|s| s.addr).collect();
    // Warm up: hooks compiled, connections open, streams created.
    let base = sink.count.load(Ordering::Relaxed);
    post(&addrs, "warm", 300, Load::Saturate).await;
    sink.wait_for(base + 300).await;

    let nats_pid = server.as_ref().map(|s| s.pid());
    // Per engine: (CPU seconds, read/write syscalls) so far.
    let usage = |pids: &[u32]| {
        pids.iter()
            .map(|&p| (cpu_of(p), syscalls_of(p)))
            .collect::<Vec<(f64, f64)>>()
    };
    let pids: Vec<u32> = serves.iter().map(|s| s.pid()).collect();
    let mut before_delivered = Vec::new();
    for serve in &serves {
        before_delivered.push(serve.delivered().await as f64);
    }
    let (before, nats_before) = (usage(&pids), nats_pid.map(cpu_of).unwrap_or(0.0));
    let msgs_before = engine_msgs(server.as_ref());
    let base = sink.count.load(Ordering::Relaxed);
    let start = Instant::now();
    post(&addrs, "run", n, load).await;
    sink.wait_for(base + n).await;
    let elapsed = start.elapsed().as_secs_f64();
    let (after, nats_after) = (usage(&pids), nats_pid.map(cpu_of).unwrap_or(0.0));
    let msgs = engine_msgs(server.as_ref()) - msgs_before;
    let mut per_engine = Vec::new();
    for (i, serve) in serves.iter().enumerate() {
        let made = serve.delivered().await as f64 - before_delivered[i];
        let made_at_least_one = made.max(1.0);
        per_engine.push(PerEngine {
            made,
            cpu_us: 1e6 * (after[i].0 - before[i].0) / made_at_least_one,
            syscalls: (after[i].1 - before[i].1) / made_at_least_one,
        });
    }
    let engines_cpu: f64 = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum();
    drop(serves);
    Row {
        rate: n as f64 / elapsed,
        engines_us: 1e6 * engines_cpu / n as f64,
        per_engine,
        nats_us: 1e6 * (nats_after - nats_before) / n as f64,
        nats_msgs: msgs / n as f64,
    }
}

/// A number from the environment variable `name`, or `default`.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn queues() {
    let n = env_or("BENCH_EVENTS", 6000);
    let pace = env_or("BENCH_PACE", 400);
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    println!("queues: one echo hook, one delivery per event, one receiver on loopback");
    println!("saturated: {n} post events, 64 in flight, spread over the engines");
    let saturated = dir.path().join("saturated");
    section(&sink, &saturated, |_| n, Load::Saturate).await;
    let per_engine = n / 3;
    println!(
        "paced: {pace} post events/s per engine, {per_engine} per engine, so each engine does the same work \
         per second in every row and the 2 cores are not saturated"
    );
    let paced = dir.path().join("paced");
    section(
        &sink,
        &paced,
        |engines| per_engine * engines,
        Load::Paced(pace),
    )
    .await;
}

/// One section: SQLite with one engine, then JetStream with 1, 2 and 3,
/// each row offered `n_of(engines)` events under `load`.
async fn section(sink: &Sink, dir: &Path, n_of: impl Fn(usize) -> usize, load: Load) {
    let sqlite = row(sink, &dir.join("sqlite"), 1, false, n_of(1), load).await;
    println!(
        "  SQLite (fsync = false), 1 engine   {:>7.0} deliveries/s   engine CPU {:>5.0} µs each, {:.1} syscalls each",
        sqlite.rate, sqlite.engines_us, sqlite.per_engine[0].syscalls
    );
    let mut one_engine = None;
    for engines in 1..=3 {
        let dir = dir.join(format!("nats{engines}"));
        let r = row(sink, &dir, engines, true, n_of(engines), load).await;
        let worst = r.per_engine.iter().map(|e| e.cpu_us).fold(0.0, f64::max);
        let one = *one_engine.get_or_insert(worst);
        let each: Vec<String> = r
            .per_engine
            .iter()
            .map(|e| {
                format!(
                    "{:.0} at {:.0} µs and {:.1} syscalls each",
                    e.made, e.cpu_us, e.syscalls
                )
            })
            .collect();
        println!(
            "  JetStream, {engines} engine{}             {:>7.0} deliveries/s ({:.2}x SQLite)   \
             engine CPU {:>5.0} µs each ({:.2}x SQLite; worst engine {worst:.0} µs per delivery it made, \
             {:.2}x one engine)   nats-server {:>4.0} µs each, {:.1} NATS messages per delivery",
            if engines == 1 { " " } else { "s" },
            r.rate,
            r.rate / sqlite.rate,
            r.engines_us,
            r.engines_us / sqlite.engines_us,
            worst / one,
            r.nats_us,
            r.nats_msgs,
        );
        println!("      per engine: {}", each.join(", "));
    }
}
