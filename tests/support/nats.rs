//! A real `nats-server` with JetStream, for tests and benchmarks: on free
//! loopback ports, its store in a temp folder, killed when dropped. The
//! binary is the one `scripts/install-guest-toolchains.sh` installs (in
//! `WASMHOOKS_TOOLCHAINS`), or `WASMHOOKS_NATS_SERVER`.
#![allow(dead_code)] // each user (unit tests, tests/all, benches) takes a part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One server (or one node of a cluster).
pub struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    monitor: u16,
    args: Vec<String>,
    _store: tempfile::TempDir,
}

/// Where the server binary is; panics naming the script that installs it.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WASMHOOKS_NATS_SERVER") {
        return bin.into();
    }
    let toolchains = std::env::var_os("WASMHOOKS_TOOLCHAINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".toolchains"));
    let bin = toolchains.join("bin/nats-server");
    assert!(
        bin.exists(),
        "nats-server is missing ({}): run scripts/install-guest-toolchains.sh",
        bin.display()
    );
    bin
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// A single server with JetStream.
    pub fn start() -> NatsServer {
        let server = NatsServer::spawn(Vec::new());
        server.wait_ready();
        server
    }

    /// A cluster of `n` nodes with JetStream, routed to each other, once
    /// it has a JetStream leader. Its ports are picked free, then released
    /// (`free_port`): a server of a test running beside may take one in
    /// between, and a node that cannot bind exits. Such a cluster is
    /// started again on other ports, up to three times.
    pub fn cluster(n: usize) -> Vec<NatsServer> {
        for _ in 0..2 {
            if let Some(nodes) = NatsServer::try_cluster(n) {
                return nodes;
            }
        }
        NatsServer::try_cluster(n).expect("the NATS cluster formed")
    }

    fn try_cluster(n: usize) -> Option<Vec<NatsServer>> {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes: Vec<NatsServer> = (0..n)
            .map(|i| {
                NatsServer::spawn(vec![
                    "--name".into(),
                    format!("node{i}"),
                    "--cluster_name".into(),
                    "wasmhooks".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ])
            })
            .collect();
        // And until JetStream's meta group knows every node and has a
        // leader, so that streams with `n` replicas can be placed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes
            .iter()
            .all(|node| node.healthy() && node.meta_formed(n))
        {
            if Instant::now() >= deadline {
                eprintln!("the NATS cluster did not form within 30 s");
                return None;
            }
            if nodes.iter_mut().any(NatsServer::exited) {
                eprintln!("a NATS node exited while the cluster formed (a port taken?)");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50)); // polling a readiness check
        }
        Some(nodes)
    }

    /// Whether its process has exited.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_some())
    }

    fn spawn(extra: Vec<String>) -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let (port, monitor) = (free_port(), free_port());
        let mut args = vec![
            "-js".to_string(),
            "-sd".into(),
            store.path().display().to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor.to_string(),
        ];
        args.extend(extra);
        let mut server = NatsServer {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            monitor,
            args,
            _store: store,
        };
        server.restart();
        server
    }

    /// Starts the server again (after [`NatsServer::kill`]) on the same
    /// ports and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_to())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the server's health check (JetStream included) passes.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(5);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "nats-server ({}) not healthy within 30 s",
                self.url
            );
            std::thread::sleep(pause); // polling a readiness check
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Whether this node sees a JetStream meta leader and `n` peers.
    fn meta_formed(&self, n: usize) -> bool {
        let Some(body) = self.monitor_get("/jsz") else {
            return false;
        };
        let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let meta = &jsz["meta_cluster"];
        meta["leader"].as_str().is_some_and(|l| !l.is_empty())
            && meta["cluster_size"].as_u64() == Some(n as u64)
            && meta["replicas"]
                .as_array()
                .map_or(n == 1, |peers| peers.len() + 1 == n)
    }

    /// The body of a monitoring endpoint, if it answered 200.
    pub fn monitor_get(&self, path: &str) -> Option<String> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.monitor)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"))
            .then(|| body.to_owned())
    }

    fn healthy(&self) -> bool {
        self.monitor_get("/healthz").is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where nats-server logs: the file `WASMHOOKS_NATS_LOG` names (appended),
/// to see what it said while a test ran; else nowhere.
fn log_to() -> Stdio {
    std::env::var_os("WASMHOOKS_NATS_LOG")
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map_or_else(Stdio::null, Stdio::from)
}

/// The URLs of `nodes` but the `victim`th: to watch a cluster that lost it.
pub fn survivors(nodes: &[NatsServer], victim: usize) -> Vec<&str> {
    nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.url.as_str())
        .collect()
}

/// The node leading stream `stream`, as `js` sees it within half a second;
/// `None` while it has none.
pub async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    tokio::time::timeout(Duration::from_millis(500), async {
        let mut stream = js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.clone()?.leader.filter(|l| !l.is_empty())
    })
    .await
    .ok()?
}
