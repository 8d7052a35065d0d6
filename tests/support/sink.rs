//! A receiver for benchmarks: answers 200 at once and counts, on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// A receiver that answers 200 at once and counts.
pub struct Sink {
    /// Where to post.
    pub url: String,
    /// Requests so far.
    pub count: Arc<AtomicUsize>,
    seen: watch::Receiver<usize>,
}

impl Sink {
    /// Listens on a free loopback port.
    pub async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sink", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let (tx, seen) = watch::channel(0);
        let counter = count.clone();
        let app = axum::Router::new().route(
            "/sink",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                tx.send_replace(n);
                async { "ok" }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink { url, count, seen }
    }

    /// Waits until `n` requests have come (10 minutes at most).
    pub async fn wait_for(&self, n: usize) {
        let mut seen = self.seen.clone();
        tokio::time::timeout(Duration::from_secs(600), seen.wait_for(|&c| c >= n))
            .await
            .expect("every delivery within 10 minutes")
            .unwrap();
    }
}
