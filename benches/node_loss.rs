//! What losing a NATS node costs an event's caller: the accept latency
//! (`POST /v1/events` to its 202) of a burst while the deliveries stream's
//! leader is SIGKILLed, against the same burst with no node lost, in one
//! run. Three nodes (`replicas = 3`), two `wasmhooks serve` engines, one
//! `echo` hook and one receiver in this process; 3,000 post events from 8
//! clients, each sending one at a time (`BENCH_EVENTS`).
//!
//! Rows: no node lost (the baseline); the leader killed a third of the way
//! with the default `spill_after_ms` (1 s: a commit that waits that long is
//! kept on the engine's disk and answered); the same with
//! `spill_after_ms = 0` (the commit waits for the new leader). For the
//! rows with a kill, the "election" columns are the requests in flight at
//! some time between the kill and the new leader (measured by polling the
//! stream; the poll sees the leader up to about half a second late).
//!
//! `cargo bench --bench node_loss` (needs nats-server, which
//! `scripts/install-guest-toolchains.sh` installs). Figures go in
//! BENCHMARKS.md.

#[allow(dead_code)] // the benchmark uses a part
#[path = "../tests/support/guests.rs"]
mod guests;
#[path = "../tests/support/nats.rs"]
mod nats_server;
#[path = "../tests/support/serve.rs"]
mod serve;
#[path = "../tests/support/sink.rs"]
mod sink;

use async_nats::jetstream;
use nats_server::NatsServer;
use serve::Serve;
use sink::Sink;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(node_loss());
}

/// How a row ends.
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    None,
    /// The deliveries stream's leader, with this `spill_after_ms`.
    Leader(u64),
}

/// One request: when it was sent, how long its answer took, its status.
struct Sent {
    at: Instant,
    took: Duration,
    status: u16,
}

struct Row {
    sent: Vec<Sent>,
    /// The kill, and how long the new leader took.
    election: Option<(Instant, Duration)>,
}

async fn row(sink: &Sink, n: usize, kill: Kill) -> Row {
    const CLIENTS: usize = 8;
    let mut nodes = NatsServer::cluster(3);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(
        hooks.join("hook.toml"),
        format!("[settings]\nmode = \"echo\"\nurl = \"{}\"\n", sink.url),
    )
    .unwrap();
    std::fs::copy(guests::wasm("misbehave"), hooks.join("hook.wasm")).unwrap();
    let spill = match kill {
        Kill::Leader(ms) => format!("spill_after_ms = {ms}\n"),
        Kill::None => String::new(),
    };
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            "[queue.nats]\nurl = \"{}\"\nreplicas = 3\n{spill}[delivery]\nallow_hosts = [\"127.0.0.1\"]\n",
            urls.join(",")
        ),
    )
    .unwrap();
    let engines: Vec<Serve> = (0..2)
        .map(|i| Serve::start(&hooks, &dir.path().join(format!("state{i}")), &config))
        .collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.addr).collect();
    let all: Vec<&str> = urls.iter().map(String::as_str).collect();
    let js = jetstream::new(async_nats::connect(all).await.unwrap());
    let event: serde_json::Value = serde_json::from_slice(
        &std::fs::read(guests::root().join("tests/fixtures/xo/vm.start.post.json")).unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    // Warm up: hooks compiled, connections open, consumers created.
    let base = sink.count.load(Ordering::Relaxed);
    for i in 0..100 {
        let mut event = event.clone();
        event["callId"] = format!("warm-{i}").into();
        let r = client
            .post(format!("http://{}/v1/events", addrs[i % 2]))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    sink.wait_for(base + 100).await;

    let sent = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let (count, mut counted) = watch::channel(0usize);
    let count = Arc::new(count);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, event, sent, count, addrs) = (
                client.clone(),
                event.clone(),
                sent.clone(),
                count.clone(),
                addrs.clone(),
            );
            tokio::spawn(async move {
                for i in (c..n).step_by(CLIENTS) {
                    let mut event = event.clone();
                    event["callId"] = format!("run-{i}").into();
                    let at = Instant::now();
                    let status = client
                        .post(format!("http://{}/v1/events", addrs[i % addrs.len()]))
                        .timeout(Duration::from_secs(60))
                        .json(&event)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    sent.lock().unwrap().push(Sent {
                        at,
                        took: at.elapsed(),
                        status,
                    });
                    count.send_modify(|k| *k += 1);
                }
            })
        })
        .collect();
    let mut election = None;
    if kill != Kill::None {
        counted.wait_for(|&k| k >= n / 3).await.unwrap();
        let name = nats_server::stream_leader(&js, "WASMHOOKS_DELIVERIES")
            .await
            .expect("the stream has a leader");
        let victim: usize = name.trim_start_matches("node").parse().unwrap();
        nodes[victim].kill();
        let killed = Instant::now();
        let survivors = nats_server::survivors(&nodes, victim);
        let watcher = jetstream::new(async_nats::connect(survivors).await.unwrap());
        while nats_server::stream_leader(&watcher, "WASMHOOKS_DELIVERIES")
            .await
            .is_none_or(|l| l == name)
        {
            tokio::time::sleep(Duration::from_millis(50)).await; // polling its state
        }
        election = Some((killed, killed.elapsed()));
    }
    for c in clients {
        c.await.unwrap();
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let accepted = sent.iter().filter(|s| s.status == 202).count();
    sink.wait_for(base + 100 + accepted).await;
    drop(engines);
    Row { sent, election }
}

/// The `q` quantile of `took`, in ms.
fn quantile(took: &mut [Duration], q: f64) -> f64 {
    if took.is_empty() {
        return 0.0;
    }
    took.sort();
    let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
    took[i].as_secs_f64() * 1e3
}

async fn node_loss() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let sink = Sink::start().await;
    println!(
        "node loss: 3 NATS nodes (replicas = 3), 2 engines, {n} post events from 8 clients \
         one at a time; accept latency (POST to 202), ms"
    );
    let mut baseline = None;
    for (label, kill) in [
        ("no node lost", Kill::None),
        ("leader killed, spill_after_ms = 1000", Kill::Leader(1000)),
        ("leader killed, spill_after_ms = 0", Kill::Leader(0)),
    ] {
        let r = row(&sink, n, kill).await;
        let mut all: Vec<Duration> = r.sent.iter().map(|s| s.took).collect();
        let refused = r.sent.iter().filter(|s| s.status != 202).count();
        let (p50, p99, max) = (
            quantile(&mut all, 0.5),
            quantile(&mut all, 0.99),
            quantile(&mut all, 1.0),
        );
        let (b50, b99) = *baseline.get_or_insert((p50, p99));
        print!(
            "  {label:<38} all: p50 {p50:>7.1} ({:.2}x)  p99 {p99:>7.1} ({:.2}x)  max {max:>7.1}  refused {refused}",
            p50 / b50,
            p99 / b99
        );
        if let Some((killed, took)) = r.election {
            let mut window: Vec<Duration> = r
                .sent
                .iter()
                .filter(|s| s.at <= killed + took && s.at + s.took >= killed)
                .map(|s| s.took)
                .collect();
            let sent = window.len();
            println!(
                "   election {:.1} s, {sent} requests in flight during it: p50 {:>7.1}  p99 {:>7.1}  max {:>7.1}",
                took.as_secs_f64(),
                quantile(&mut window, 0.5),
                quantile(&mut window, 0.99),
                quantile(&mut window, 1.0)
            );
        } else {
            println!();
        }
    }
}
