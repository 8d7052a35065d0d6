//! At-least-once across a crash: `wasmhooks serve` as a child process,
//! killed with SIGKILL while deliveries are pending and in flight.

use crate::{Receiver, Serve, fixture_json, install};
use std::collections::HashMap;

/// A temporary folder with `hooks/` (the `misbehave` hook with `toml`),
/// `state/`, and `engine.toml` allowing loopback receivers, with long
/// request timeouts and `delivery` added to its `[delivery]`.
struct Folders {
    _dir: tempfile::TempDir,
    hooks: std::path::PathBuf,
    state: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Folders {
    fn new(toml: &str, delivery: &str) -> Folders {
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks");
        std::fs::create_dir(&hooks).unwrap();
        install(&hooks, "hook", "misbehave", Some(toml));
        let config = dir.path().join("engine.toml");
        let engine =
            format!("[delivery]\nallow_hosts = [\"127.0.0.1\"]\ntimeout_ms = 120000\n{delivery}\n");
        std::fs::write(&config, engine).unwrap();
        Folders {
            state: dir.path().join("state"),
            hooks,
            config,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_engine_loses_no_accepted_event() {
    const N: usize = 200;
    let receiver = Receiver::stalled().await;
    let toml = format!(
        "deadline_ms = 10000\n[settings]\nmode = \"echo\"\nurl = \"{}\"\ndelay_ms = 2000\n",
        receiver.url("/crash")
    );
    let folders = Folders::new(
        &toml,
        "retry_schedule_ms = [100, 200, 400, 800, 1600, 3200, 6400]",
    );
    let (hooks, state, config) = (&folders.hooks, &folders.state, &folders.config);

    let engine = Serve::start(hooks, state, config);
    let client = reqwest::Client::new();
    let mut event = fixture_json("vm.start.post");
    // All at once, as an orchestrator with many operations would: the
    // hook is slower than post()'s inline window, so each event is
    // journaled before it is accepted.
    let sends = (0..N).map(|i| {
        event["callId"] = format!("crash-{i}").into();
        client
            .post(format!("http://{}/v1/events", engine.addr))
            .json(&event)
            .send()
    });
    for (i, response) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(response.unwrap().status(), 202, "event {i} accepted");
    }
    // The hook takes 2 s per event (200 events, 128 calls at a time), so
    // when the first delivery reaches the receiver (which holds it: in
    // flight), the second wave is still in its hook (journaled) and the
    // first wave's deliveries are pending. (With 300 ms, a slow disk's
    // commits let the second wave finish first, once in CI.)
    receiver.wait_for(1).await;
    engine.kill();
    let before = receiver.received().len();

    let engine = Serve::start(hooks, state, config);
    receiver.open();
    receiver
        .wait_until("every accepted event's delivery", |got| {
            unique_ids(got).len() == N
        })
        .await;
    let got = receiver.received();
    let ids = unique_ids(&got);
    let duplicates: usize = ids.values().map(|n| n - 1).sum();
    // The restarted engine said how many events it found journaled.
    let rerun: usize = engine
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            let n = l.split("events=").nth(1)?;
            n.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0);
    println!(
        "crash test: {N} events accepted; {before} requests reached the receiver before \
         SIGKILL; {rerun} events ran again from the journal after restart; \
         {} unique webhook-ids, {duplicates} duplicates",
        ids.len()
    );
    assert!(rerun > 0, "the kill came while hooks were still running");
    assert_eq!(ids.len(), N);
    // Only deliveries that were in flight at the kill go out twice.
    assert!(
        duplicates <= before,
        "{duplicates} duplicates, {before} in flight"
    );
    drop(engine);
}

/// `wait` deliveries are queued like the rest: killed while pre callers
/// wait for them, the engine sends them after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_engine_sends_wait_deliveries_after_restart() {
    const N: usize = 40;
    let receiver = Receiver::stalled().await;
    let toml = format!(
        "wait = true\n[settings]\nmode = \"echo\"\nurl = \"{}\"\nphases = [\"pre\"]\n",
        receiver.url("/gate")
    );
    let folders = Folders::new(&toml, "wait_budget_ms = 60000");
    let (hooks, state, config) = (&folders.hooks, &folders.state, &folders.config);

    let engine = Serve::start(hooks, state, config);
    let client = reqwest::Client::new();
    let mut event = fixture_json("vm.start.pre");
    // The callers wait for their verdicts, which wait for the deliveries.
    let waiting: Vec<_> = (0..N)
        .map(|i| {
            event["callId"] = format!("wait-{i}").into();
            tokio::spawn(
                client
                    .post(format!("http://{}/v1/events", engine.addr))
                    .json(&event)
                    .send(),
            )
        })
        .collect();
    let admin = wasmhooks::DeliveryAdmin::open(state).unwrap();
    crate::eventually("every wait delivery queued", || async {
        admin
            .list(wasmhooks::DeliveryQuery::new(
                wasmhooks::DeliveryState::Pending,
                1000,
            ))
            .await
            .unwrap()
            .len()
            == N
    })
    .await;
    receiver.wait_for(1).await;
    engine.kill();
    for caller in waiting {
        assert!(
            caller.await.unwrap().is_err(),
            "no verdict from a killed engine"
        );
    }

    let engine = Serve::start(hooks, state, config);
    receiver.open();
    receiver
        .wait_until("every wait delivery", |got| unique_ids(got).len() == N)
        .await;
    drop(engine);
}

fn unique_ids(got: &[crate::Received]) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for r in got {
        *ids.entry(r.header("webhook-id").to_owned()).or_insert(0) += 1;
    }
    ids
}

/// SIGTERM with deliveries in flight to a slow receiver: they finish, the
/// engine exits 0, and nothing is left to send again after a restart.
/// Before: SIGTERM killed it at once (exit -15), and what was in flight
/// went out again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_deliveries_in_flight_finish_and_exits_0() {
    const N: usize = 5;
    let receiver = Receiver::slow(std::time::Duration::from_millis(1000)).await;
    let toml = format!(
        "[settings]\nmode = \"echo\"\nurl = \"{}\"\nphases = [\"post\"]\n",
        receiver.url("/term")
    );
    let folders = Folders::new(&toml, "");
    let (hooks, state, config) = (&folders.hooks, &folders.state, &folders.config);
    let engine = Serve::start(hooks, state, config);
    let client = reqwest::Client::new();
    let mut event = fixture_json("vm.start.post");
    for i in 0..N {
        event["callId"] = format!("term-{i}").into();
        let response = client
            .post(format!("http://{}/v1/events", engine.addr))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    receiver.wait_for(N).await; // all in flight: the receiver answers in 1 s
    let status = engine.terminate();
    assert_eq!(status.code(), Some(0), "a clean stop");
    assert_eq!(receiver.received().len(), N);
    let admin = wasmhooks::DeliveryAdmin::open(state).unwrap();
    let pending = admin
        .list(wasmhooks::DeliveryQuery::new(
            wasmhooks::DeliveryState::Pending,
            100,
        ))
        .await
        .unwrap();
    assert!(pending.is_empty(), "all recorded as delivered: {pending:?}");
    // A restart finds nothing to send again.
    let engine = Serve::start(hooks, state, config);
    let r = client
        .get(format!("http://{}/v1/deliveries", engine.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "[]");
    assert_eq!(receiver.received().len(), N);
    drop(engine);
}
