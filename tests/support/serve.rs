//! `wasmhooks serve` as a child process, for tests and benchmarks: it
//! says where it listens, its log is kept, and it is killed when dropped.
#![allow(dead_code)] // each user takes a part

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A `wasmhooks serve` child, killed when dropped.
pub struct Serve {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    pub fn start(hooks: &Path, state: &Path, config: &Path) -> Serve {
        Serve::start_with(hooks, state, config, &[])
    }

    /// [`Serve::start`] with more arguments.
    pub fn start_with(hooks: &Path, state: &Path, config: &Path, args: &[&str]) -> Serve {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
            .args(["serve", "--no-watch", "--listen", "127.0.0.1:0"])
            .arg("--hooks")
            .arg(hooks)
            .arg("--state")
            .arg(state)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("WASMHOOKS_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("wasmhooks serve starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        // Keep reading, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split(':').take(2).collect::<Vec<_>>().join(":");
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader thread has seen the end of the log by now.
                std::thread::sleep(std::time::Duration::from_millis(100));
                panic!(
                    "the engine did not say where it listens ({e}); its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Serve {
            child,
            addr: addr.parse().unwrap(),
            log,
        }
    }

    /// Deliveries it says it made (`wasmhooks_deliveries_total`, all
    /// receivers).
    pub async fn delivered(&self) -> u64 {
        self.metric("wasmhooks_deliveries_total").await
    }

    /// The sum of a metric's series on its `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// SIGTERM, as a process manager sends; returns how it exited.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        self.child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `app` (the library's router) on a loopback port the way
/// `wasmhooks serve` does, in this process; returns its base URL.
pub async fn serve_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let http = wasmhooks::config::HttpConfig::default();
        wasmhooks::server::serve(listener, app, &http, std::future::pending()).await
    });
    base
}
