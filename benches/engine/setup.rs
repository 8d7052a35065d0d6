//! What the sections share: events, settings, hooks, a receiver, and callers
//! of the HTTP API.

use crate::guests;
use crate::measure::*;
use std::collections::BTreeMap;
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

    /// The same receiver on a thread of its own (`bench-receiver`, a
    /// one-thread runtime), as a real receiver is apart from the engine,
    /// and so that its CPU can be told apart.
    pub(crate) fn apart() -> Sink {
        let (started, sink) = std::sync::mpsc::channel();
        on_own_thread("bench-receiver", async move {
            started.send(Sink::start().await).unwrap();
            std::future::pending::<()>().await
        });
        sink.recv().unwrap()
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
/// the sink has had as many deliveries; returns deliveries/s, the CPU per
/// delivery (µs), and where that CPU went. The callers run on a thread of
/// their own (`bench-callers`, a one-thread runtime), so that with a sink
/// from [`Sink::apart`] the split tells the two ends from what is between.
pub(crate) async fn drive(
    sink: &Sink,
    base: &str,
    bodies: Vec<bytes::Bytes>,
    callers: usize,
) -> (f64, f64, Split) {
    let n = bodies.len();
    let url = format!("{base}/v1/events");
    let done = sink.expect(n).await;
    // Made before the clock starts: it reads the system's certificates.
    let client = reqwest::Client::new();
    let (clock, threads) = (Stopwatch::start(), ThreadClock::start());
    let (posted, finished) = tokio::sync::oneshot::channel();
    on_own_thread("bench-callers", async move {
        post_all(&client, &url, bodies, callers).await;
        // This thread's CPU, before it exits and leaves /proc/self/task.
        let _ = posted.send(thread_cpu_seconds());
    });
    let callers_cpu = finished.await.expect("every caller's answer is a success");
    done.await;
    let (rate, cpu) = clock.per_item(n);
    let mut by_thread = threads.per_item(n);
    by_thread.insert("bench-callers".into(), 1e6 * callers_cpu / n as f64);
    let exited = cpu - by_thread.values().sum::<f64>();
    (rate, cpu, Split { by_thread, exited })
}

/// Runs `task` on a new thread called `name`, in a one-thread runtime of
/// its own.
fn on_own_thread(name: &str, task: impl Future<Output = ()> + Send + 'static) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(task)
        })
        .unwrap();
}

/// Where the CPU of a [`drive`] went, in µs per delivery.
pub(crate) struct Split {
    /// By thread name.
    pub(crate) by_thread: BTreeMap<String, f64>,
    /// Threads that exited during the run (the blocking pool's, mostly).
    pub(crate) exited: f64,
}

impl Split {
    /// The threads whose name starts with `prefix`, in µs per delivery.
    pub(crate) fn of(&self, prefix: &str) -> f64 {
        self.by_thread
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, us)| us)
            .sum()
    }
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
