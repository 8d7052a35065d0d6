//! What the sections share: events, settings, hooks, a receiver, and callers
//! of the HTTP API.

use crate::guests;
use crate::measure::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use wasmhooks::config::Config;

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(guests::root().join(format!("tests/fixtures/xo/{name}.json"))).unwrap()
}

pub(crate) fn bench_config(dir: &Path) -> Config {
    Config {
        hooks_dir: dir.to_owned(),
        cache_dir: None,
        state_dir: None,
        // These benches send the same event over and over: accept every copy.
        dedup_window_secs: 0,
        ..Config::default()
    }
}

pub(crate) fn with_cache(dir: &Path, cache: &Path) -> Config {
    Config {
        cache_dir: Some(cache.to_owned()),
        ..bench_config(dir)
    }
}

/// Installs the `forward` hook as `name` in `hooks`, sending `vm.*` events
/// of `phase` to `url`, with `extra` appended to its settings file.
pub(crate) fn install_forward(hooks: &Path, name: &str, url: &str, phase: &str, extra: &str) {
    std::fs::copy(guests::wasm("forward"), hooks.join(format!("{name}.wasm"))).unwrap();
    std::fs::write(
        hooks.join(format!("{name}.toml")),
        format!(
            "allow_hosts = [\"127.0.0.1\"]\n[settings]\nurl = \"{url}\"\nmethods = [\"vm.*\"]\nphases = [\"{phase}\"]\n{extra}"
        ),
    )
    .unwrap();
}

/// A local receiver that answers 200 and counts, for the delivery section.
pub(crate) struct Sink {
    pub(crate) url: String,
    pub(crate) count: Arc<AtomicUsize>,
    pub(crate) reached: Arc<tokio::sync::Notify>,
    pub(crate) target: Arc<AtomicUsize>,
}

impl Sink {
    pub(crate) async fn start() -> Sink {
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
    pub(crate) async fn expect(&self, n: usize) -> impl Future<Output = ()> + use<> {
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

/// Posts `bodies` to `base`/v1/events from `callers` tasks and waits until
/// the sink has had as many deliveries; returns deliveries/s and the CPU
/// per delivery (µs).
pub(crate) async fn drive(
    sink: &Sink,
    base: &str,
    bodies: Vec<bytes::Bytes>,
    callers: usize,
) -> (f64, f64) {
    let n = bodies.len();
    let client = reqwest::Client::new();
    let done = sink.expect(n).await;
    let clock = Stopwatch::start();
    post_all(&client, &format!("{base}/v1/events"), bodies, callers).await;
    done.await;
    clock.per_item(n)
}

/// POSTs each of `bodies` to `url`, from `callers` tasks sharing `client`;
/// each answer must be a success.
pub(crate) async fn post_all(
    client: &reqwest::Client,
    url: &str,
    bodies: Vec<bytes::Bytes>,
    callers: usize,
) {
    let bodies = Arc::new(bodies);
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (client, bodies, url) = (client.clone(), bodies.clone(), url.to_owned());
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
}
