//! Slow, idle and numerous clients of the HTTP API: each is cut off by a
//! limit of `[http]` while the others are served. Raw TCP on 127.0.0.1, so
//! the tests can misbehave as no HTTP client library would.

use crate::test_config;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmhooks::Engine;
use wasmhooks::config::HttpConfig;

/// An engine with no hooks, served with these limits on a loopback port.
async fn serve(http: HttpConfig) -> (tempfile::TempDir, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http = http.clone();
    let engine = Engine::new(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = wasmhooks::server::router(engine);
    let forever = std::future::pending();
    tokio::spawn(async move { wasmhooks::server::serve(listener, app, &http, forever).await });
    (dir, addr)
}

/// Sends `request` on a new connection and reads until the server closes
/// it: the requests here ask for `Connection: close`, or are cut off.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut stream).await
}

/// What the server sends until it closes the connection (or resets it),
/// within 20 s: longer is a server that never lets go.
async fn read_to_close(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CLOSED_WITHIN, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the server still holds the connection after {CLOSED_WITHIN:?}"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

/// Far past every timeout the tests set.
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: wasmhooks\r\nConnection: close\r\n\r\n")
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

/// A slowloris client, trickling its headers a byte at a time, is closed
/// once `header_timeout_ms` has passed, however busy it keeps the
/// connection; requests on other connections are served meanwhile.
#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let (_dir, addr) = serve(HttpConfig {
        header_timeout_ms: 600,
        ..HttpConfig::default()
    })
    .await;
    let started = Instant::now();
    let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    let trickle = async move {
        let head = b"GET /v1/hooks HTTP/1.1\r\nX-Slow: ".iter();
        for &byte in head.chain(std::iter::repeat(&b'a')) {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            // The attack itself: a byte every 20 ms, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let trickle = tokio::spawn(trickle);

    let answer = exchange(addr, &get("/v1/hooks")).await;
    assert_eq!(status(&answer), "200", "{answer}");

    read_to_close(&mut read).await;
    let held = started.elapsed();
    trickle.abort();
    assert!(
        held >= Duration::from_millis(600),
        "the slow client was held {held:?}"
    );
}

/// A request whose body never comes gets 408 once `body_timeout_ms` has
/// passed; one that announces a body over the limit gets 413 at once,
/// before anything is read.
#[tokio::test]
async fn a_body_that_never_comes_gets_408_and_an_oversized_one_413() {
    let (_dir, addr) = serve(HttpConfig {
        body_timeout_ms: 600,
        ..HttpConfig::default()
    })
    .await;
    let post = |length: u64| {
        format!("POST /v1/events HTTP/1.1\r\nHost: wasmhooks\r\nContent-Length: {length}\r\n\r\n")
    };
    let started = Instant::now();
    let answer = exchange(addr, &post(1000)).await;
    assert_eq!(status(&answer), "408", "{answer}");
    assert!(answer.contains("body_timeout_ms"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(600));

    let answer = exchange(addr, &post(99_999_999_999)).await;
    assert_eq!(status(&answer), "413", "{answer}");
}

/// With `max_connections` idle connections open, `/healthz` still answers
/// on a new one, the other routes answer 503 with `Retry-After`, and once
/// the idle connections go, requests are served again.
#[tokio::test]
async fn past_the_connection_limit_healthz_answers_and_the_rest_get_503() {
    let (_dir, addr) = serve(HttpConfig {
        max_connections: 4,
        header_timeout_ms: 60_000,
        ..HttpConfig::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Accepted in the order they connected: these are past the limit.
    let answer = exchange(addr, &get("/healthz")).await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
    let answer = exchange(addr, &get("/v1/hooks")).await;
    assert_eq!(status(&answer), "503", "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains("http.max_connections"), "{answer}");

    drop(idle);
    // The server frees their places once it sees them closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = exchange(addr, &get("/v1/hooks")).await;
        if status(&answer) == "200" {
            break;
        }
        assert_eq!(status(&answer), "503", "{answer}");
        assert!(Instant::now() < deadline, "still refused: {answer}");
        tokio::task::yield_now().await;
    }
}

/// An idle keep-alive connection is closed after `header_timeout_ms`, so
/// idle clients cannot hold every place.
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_timeout() {
    let (_dir, addr) = serve(HttpConfig {
        header_timeout_ms: 600,
        ..HttpConfig::default()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: wasmhooks\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(600));
}
