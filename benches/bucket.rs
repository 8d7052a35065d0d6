//! From `wasmhooks hooks push` to live on three engines, against its
//! floors in the same run:
//! - the raw notification: a put to a JetStream key-value bucket until
//!   three watchers in this process have it (what every switch waits for);
//! - the same change as a hot reload from a folder, on one engine in this
//!   process (a module renamed into a watched folder, until it is live).
//!
//! Rows (each `BENCH_ROUNDS` times, 10 by default): a set of two new
//! modules (each engine compiles them, or finds them in the shared
//! compiled cache); a set seen before (a rollback: nothing to upload, its
//! files fetched again, its modules from the compiled cache). Three
//! `wasmhooks serve` on one NATS server, on this machine.
//!
//! `cargo bench --bench bucket` (needs nats-server, which
//! `scripts/install-guest-toolchains.sh` installs). Figures go in
//! BENCHMARKS.md.

#[allow(dead_code)] // the benchmark uses a part
#[path = "../tests/support/guests.rs"]
mod guests;
#[path = "../tests/support/nats.rs"]
mod nats_server;
#[path = "../tests/support/serve.rs"]
mod serve;

use futures::StreamExt as _;
use nats_server::NatsServer;
use serve::Serve;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmhooks::bucket::push;
use wasmhooks::config::{BucketConfig, Config};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

/// Two gates of version `k`.
fn set(root: &Path, k: u32) -> PathBuf {
    let dir = root.join(format!("set-{k}"));
    std::fs::create_dir_all(&dir).unwrap();
    for gate in ["g1", "g2"] {
        std::fs::write(
            dir.join(format!("{gate}.wasm")),
            guests::misbehave_version(k),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{gate}.toml")),
            "mode = \"monitor\"\n[settings]\nmode = \"deny\"\n",
        )
        .unwrap();
    }
    dir
}

/// p50 and max, in ms.
fn summary(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(times[times.len() / 2]), ms(*times.last().unwrap()))
}

async fn bench() {
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let nats = NatsServer::start();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let bucket = BucketConfig {
        url: nats.url.clone(),
        ..BucketConfig::default()
    };

    // The floor: a put, until three watchers have it.
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "FLOOR".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(kv.watch("k").await.unwrap());
    }
    let mut floor = Vec::new();
    for i in 0..rounds {
        let started = Instant::now();
        kv.put("k", i.to_string().into()).await.unwrap();
        for w in &mut watchers {
            w.next().await.unwrap().unwrap();
        }
        floor.push(started.elapsed());
    }

    // A hot reload from a folder, one engine in this process.
    let folder = root.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    let source = set(root, 0);
    for f in ["g1.wasm", "g1.toml", "g2.wasm", "g2.toml"] {
        std::fs::copy(source.join(f), folder.join(f)).unwrap();
    }
    // Every engine has a compiled cache of its own, empty at first: a new
    // module is compiled, on each engine, in every row that has one.
    let engine = wasmhooks::Engine::new(Config {
        hooks_dir: folder.clone(),
        state_dir: None,
        cache_dir: Some(root.join("cache-folder")),
        settle_ms: 50,
        ..Config::default()
    })
    .await
    .unwrap();
    let mut reload = Vec::new();
    for i in 0..rounds {
        let k = 50 + i;
        let bytes = guests::misbehave_version(k);
        let mut changes = engine.hook_changes();
        let old = engine.hooks()[0].hash.clone();
        let started = Instant::now();
        let temp = folder.join(".g1.tmp");
        std::fs::write(&temp, &bytes).unwrap();
        std::fs::rename(&temp, folder.join("g1.wasm")).unwrap();
        while engine.hooks()[0].hash == old {
            changes.changed().await.unwrap();
        }
        reload.push(started.elapsed());
    }
    drop(engine);

    // Three engines on the bucket.
    let config = root.join("engine.toml");
    std::fs::write(&config, "fsync = false\n").unwrap();
    let first = push(&bucket, &set(root, 1)).await.unwrap().version;
    let engines: Vec<Serve> = (0..3)
        .map(|i| {
            let cache = root.join(format!("cache-{i}"));
            let args = ["--cache", cache.to_str().unwrap()];
            Serve::start_with(
                Path::new(&nats.url),
                &root.join(format!("e{i}")),
                &config,
                &args,
            )
        })
        .collect();
    let client = reqwest::Client::new();
    let live_everywhere = |version: u64| {
        let client = client.clone();
        let addrs: Vec<_> = engines.iter().map(|e| e.addr).collect();
        async move {
            for addr in addrs {
                loop {
                    let set: serde_json::Value = client
                        .get(format!("http://{addr}/v1/hooks/set"))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    if set["version"] == version {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    };
    live_everywhere(first).await;
    let (mut new, mut seen) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let k = 70 + i;
        let dir = set(root, k);
        let started = Instant::now();
        let version = push(&bucket, &dir).await.unwrap().version;
        live_everywhere(version).await;
        new.push(started.elapsed());
        // Back to the set before: nothing to upload or compile.
        let back = if i == 0 {
            root.join("set-1")
        } else {
            root.join(format!("set-{}", k - 1))
        };
        let started = Instant::now();
        let version = push(&bucket, &back).await.unwrap().version;
        live_everywhere(version).await;
        seen.push(started.elapsed());
        let version = push(&bucket, &dir).await.unwrap().version;
        live_everywhere(version).await;
    }

    let (floor_p50, floor_max) = summary(floor);
    let (reload_p50, reload_max) = summary(reload);
    println!("{rounds} rounds each; p50 and max in ms; ratio of p50s");
    println!("{:<58} {:>8} {:>8} {:>8}", "", "p50", "max", "ratio");
    println!(
        "{:<58} {floor_p50:>8.2} {floor_max:>8.2} {:>8}",
        "floor: KV put until 3 watchers have it", "1.0"
    );
    println!(
        "{:<58} {reload_p50:>8.2} {reload_max:>8.2} {:>8.1}",
        "floor: one new module hot-reloaded from a folder (1 engine)",
        reload_p50 / floor_p50
    );
    for (what, times) in [
        ("push to live on 3 engines, 2 new modules", new),
        (
            "push to live on 3 engines, a set seen before (rollback)",
            seen,
        ),
    ] {
        let (p50, max) = summary(times);
        println!(
            "{what:<58} {p50:>8.2} {max:>8.2} {:>8.1}  ({:.1}x the folder reload)",
            p50 / floor_p50,
            p50 / reload_p50
        );
    }
}
