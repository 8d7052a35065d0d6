//! Integration tests: real components built from source, real files in temp
//! dirs, a real HTTP receiver on 127.0.0.1.

/// The checks named, each as a test on each queue backend: SQLite, and
/// NATS JetStream (a server of its own per test). Defined before the
/// modules that use it.
macro_rules! on_every_queue {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $check() { super::$check(crate::Backend::Sqlite).await })*
        }
        mod nats {
            $(#[tokio::test] async fn $check() { super::$check(crate::Backend::nats()).await })*
        }
    };
}

mod activity;
mod alerts;
mod bad_files;
mod bucket;
mod cli;
mod clients;
mod console;
mod crash;
mod delivery;
mod examples;
mod hook_tests;
mod hostile;
mod languages;
mod layers;
mod monitor;
mod nats;
mod openapi;
mod package;
mod pipeline;
mod preinit;
mod reload;
mod reuse;
mod safety;
mod server;
mod signed;
mod simulate;
mod sources;
mod traces;
mod worlds;
mod xo_plugin;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use wasmhooks::config::{Config, DeliveryConfig};
use wasmhooks::{Engine, Event};

#[path = "../support/guests.rs"]
pub mod guests;
#[path = "../support/nats.rs"]
pub mod nats_server;
#[path = "../support/serve.rs"]
pub mod serve;
#[path = "../support/xo_events.rs"]
pub mod xo_events;
pub use guests::{root, wasm};
pub use nats_server::free_port;
pub use serve::Serve;

/// Runs `node --test FILE` in `dir` against this build's `wasmhooks` and
/// the built example hooks (WASMHOOKS_BIN, WASMHOOKS_GUESTS), with `env`
/// besides; its output goes straight to ours as it runs. Each of its tests
/// is bounded, so a hang is a failure that says where.
pub fn node_test(
    dir: &Path,
    files: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::ExitStatus {
    let guests = wasm("forward").parent().unwrap().to_owned();
    std::process::Command::new("node")
        .args([
            "--test",
            "--test-timeout=300000",
            "--test-force-exit",
            "--test-concurrency=1",
        ])
        .args(files)
        .current_dir(dir)
        .env("WASMHOOKS_BIN", env!("CARGO_BIN_EXE_wasmhooks"))
        .env("WASMHOOKS_GUESTS", &guests)
        .envs(env.iter().copied())
        .status()
        .expect("running node (Node 20 or later is needed)")
}

/// Sends `request` and reads its answer as JSON.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A sample event from `tests/fixtures/xo`.
pub fn fixture(name: &str) -> Event {
    Event::from_json(&fixture_bytes(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(root().join(format!("tests/fixtures/xo/{name}.json"))).unwrap()
}

/// A fixture as a JSON value, to compare bodies with.
pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap()
}

/// Copies a built guest into `dir` as `NAME.wasm`, with `NAME.toml` if given.
pub fn install(dir: &Path, name: &str, guest: &str, toml: Option<&str>) {
    if let Some(toml) = toml {
        std::fs::write(dir.join(format!("{name}.toml")), toml).unwrap();
    }
    std::fs::copy(wasm(guest), dir.join(format!("{name}.wasm"))).unwrap();
}

/// Engine settings for tests: short retries, generous deadlines for debug builds.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        hooks_dir: dir.to_owned(),
        // A real SQLite file, hidden so the hooks folder ignores it.
        state_dir: Some(dir.join(".state")),
        fsync: false,
        // Tests send the same fixture many times; the tests of recognising
        // an event sent twice turn this on.
        dedup_window_secs: 0,
        ..Config::default()
    };
    config.limits.deadline_ms = 2_000;
    config.delivery = DeliveryConfig {
        retry_schedule_ms: vec![10, 20, 40],
        // Receivers run on loopback, which the SSRF guard refuses by default.
        allow_hosts: vec!["127.0.0.1".into()],
        ..DeliveryConfig::default()
    };
    config
}

pub async fn engine(dir: &Path) -> Engine {
    Engine::new(test_config(dir)).await.expect("engine starts")
}

/// Which queue a test's engine uses, so that one check runs on each.
pub enum Backend {
    /// A SQLite file in the hooks folder ([`test_config`]).
    Sqlite,
    /// NATS JetStream, on a server of the test's own.
    Nats(nats_server::NatsServer),
}

impl Backend {
    /// A JetStream server for this test.
    pub fn nats() -> Backend {
        Backend::Nats(nats_server::NatsServer::start())
    }

    /// [`test_config`] on this queue.
    pub fn config(&self, dir: &Path) -> Config {
        let mut config = test_config(dir);
        if let Backend::Nats(server) = self {
            config.queue = wasmhooks::config::QueueConfig::Nats(wasmhooks::config::NatsConfig {
                url: server.url.clone(),
                ack_wait_ms: 2_000,
                ..Default::default()
            });
        }
        config
    }

    /// [`one_hook`] on this queue.
    pub async fn one_hook(
        &self,
        name: &str,
        guest: &str,
        toml: &str,
    ) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), name, guest, Some(toml));
        let engine = Engine::new(self.config(dir.path()))
            .await
            .expect("engine starts");
        (dir, engine)
    }
}

/// A temporary hooks folder holding one hook (a built guest installed as
/// `name`, with `toml` as its settings), and an engine serving it. Keep the
/// folder alive as long as the engine.
pub async fn one_hook(name: &str, guest: &str, toml: &str) -> (tempfile::TempDir, Engine) {
    one_hook_file(name, &wasm(guest), toml).await
}

/// [`one_hook`] with any `.wasm` file.
pub async fn one_hook_file(name: &str, wasm: &Path, toml: &str) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{name}.toml")), toml).unwrap();
    std::fs::copy(wasm, dir.path().join(format!("{name}.wasm"))).unwrap();
    let engine = engine(dir.path()).await;
    (dir, engine)
}

/// Why the engine's first hook failed to load; panics if it did not.
pub fn load_error(engine: &Engine) -> wasmhooks::LoadError {
    engine.hooks()[0].last_error.clone().expect("a load error")
}

/// Re-checks `ready` (every 10 ms, up to 30 s) until it holds: for state
/// that has no change notification, such as a delivery's attempts.
pub async fn eventually<F: std::future::Future<Output = bool>>(what: &str, ready: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body of {} is not JSON: {e}", self.path))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }
}

/// A receiver that answers `down` until the returned flag is set, then 200.
pub async fn failing_until_up(down: StatusCode) -> (Arc<AtomicBool>, Receiver) {
    let up = Arc::new(AtomicBool::new(false));
    let answer = up.clone();
    let receiver = Receiver::with(move |_, _| match answer.load(Ordering::SeqCst) {
        true => (StatusCode::OK, vec![]),
        false => (down, vec![]),
    })
    .await;
    (up, receiver)
}

/// A receiver that answers `first` to its first request, then 200.
pub async fn failing_once(first: StatusCode) -> Receiver {
    Receiver::with(move |_, n| match n {
        0 => (first, vec![]),
        _ => (StatusCode::OK, vec![]),
    })
    .await
}

type Responder = Box<
    dyn Fn(&Received, usize) -> (StatusCode, Vec<(&'static str, String)>, Vec<u8>) + Send + Sync,
>;

struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
    respond: Responder,
    /// While false, requests are recorded but not answered: a slow receiver.
    open: watch::Sender<bool>,
    /// How long each answer takes, in ms.
    delay_ms: std::sync::atomic::AtomicU64,
}

/// A real HTTP receiver on 127.0.0.1, port 0, that records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn start() -> Receiver {
        Receiver::with(|_, _| (StatusCode::OK, vec![])).await
    }

    /// Answers what `respond` says, given the request and how many came before it.
    pub async fn with(
        respond: impl Fn(&Received, usize) -> (StatusCode, Vec<(&'static str, String)>)
        + Send
        + Sync
        + 'static,
    ) -> Receiver {
        Receiver::on(0, respond).await
    }

    /// Like [`Receiver::with`], on a given loopback port (0 for any).
    pub async fn on(
        port: u16,
        respond: impl Fn(&Received, usize) -> (StatusCode, Vec<(&'static str, String)>)
        + Send
        + Sync
        + 'static,
    ) -> Receiver {
        Receiver::answering(port, move |r, n| {
            let (status, headers) = respond(r, n);
            (status, headers, Vec::new())
        })
        .await
    }

    /// Like [`Receiver::on`], with a body in each answer.
    pub async fn answering(
        port: u16,
        respond: impl Fn(&Received, usize) -> (StatusCode, Vec<(&'static str, String)>, Vec<u8>)
        + Send
        + Sync
        + 'static,
    ) -> Receiver {
        let state = Arc::new(ReceiverState {
            requests: Mutex::default(),
            count: watch::channel(0).0,
            respond: Box::new(respond),
            open: watch::channel(true).0,
            delay_ms: Default::default(),
        });
        let app = Router::new().fallback(record).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    /// A receiver that records requests but answers none until [`Receiver::open`].
    pub async fn stalled() -> Receiver {
        let receiver = Receiver::start().await;
        receiver.state.open.send_replace(false);
        receiver
    }

    /// A receiver that answers 200 to everything, each after `delay`.
    pub async fn slow(delay: Duration) -> Receiver {
        let receiver = Receiver::start().await;
        let ms = delay.as_millis() as u64;
        receiver
            .state
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        receiver
    }

    /// Lets a stalled receiver answer, now and from now on.
    pub fn open(&self) {
        self.state.open.send_replace(true);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until at least `n` requests arrived (answered or not; failing
    /// after 30 s) and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut rx = self.state.count.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "receiver got {} requests, expected {n}",
                    self.received().len()
                )
            })
            .unwrap();
        self.received()
    }

    /// Waits (up to 30 s) until the requests so far satisfy `ready`.
    pub async fn wait_until(&self, what: &str, ready: impl Fn(&[Received]) -> bool) {
        let mut rx = self.state.count.subscribe();
        let wait = async {
            loop {
                if ready(&self.received()) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
        {
            panic!(
                "timed out waiting for {what}; the receiver got {} requests",
                self.received().len()
            );
        }
    }

    /// Waits (up to 30 s) for a request `matches` accepts, and returns the
    /// first one.
    pub async fn wait_for_one(&self, what: &str, matches: impl Fn(&Received) -> bool) -> Received {
        self.wait_until(what, |got| got.iter().any(&matches)).await;
        self.received()
            .into_iter()
            .find(matches)
            .expect("waited for it")
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }
}

async fn record(State(state): State<Arc<ReceiverState>>, request: Request) -> impl IntoResponse {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let received = Received {
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    let before = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(received.clone());
        requests.len() - 1
    };
    state.count.send_modify(|c| *c += 1);
    let (status, headers, body) = (state.respond)(&received, before);
    let _ = state.open.subscribe().wait_for(|open| *open).await;
    let delay = state.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        // A slow receiver: the delay is what is under test, not a wait for it.
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut response = (status, body).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
