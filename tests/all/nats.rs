//! Several engines sharing one queue on NATS JetStream: `wasmhooks serve`
//! children on a real `nats-server` (one node, or a cluster of three), a
//! real receiver on loopback.

use crate::nats_server::NatsServer;
use crate::{Serve, fixture_json, install};
use axum::extract::State;
use axum::http::HeaderMap;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A receiver that counts what it gets by `x-call-id` (the event), after
/// an optional delay per request.
#[derive(Clone)]
struct Tally {
    url: String,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    unique: watch::Sender<usize>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl Tally {
    async fn start(delay: Duration) -> Tally {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tally = Tally {
            url: format!("http://{}/tally", listener.local_addr().unwrap()),
            seen: Default::default(),
            unique: watch::channel(0).0,
            requests: Default::default(),
        };
        async fn take(
            State((t, delay)): State<(Tally, Duration)>,
            headers: HeaderMap,
        ) -> &'static str {
            tokio::time::sleep(delay).await; // a slow receiver
            let id = headers
                .get("x-call-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            t.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let unique = {
                let mut seen = t.seen.lock().unwrap();
                *seen.entry(id).or_default() += 1;
                seen.len()
            };
            t.unique.send_replace(unique);
            "ok"
        }
        let app = axum::Router::new()
            .route("/tally", axum::routing::post(take))
            .with_state((tally.clone(), delay));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        tally
    }

    /// Waits until every one of `ids` has arrived (within `within`).
    async fn wait_all(&self, ids: &[String], within: Duration) {
        if let Err(missing) = self.missing_after(ids, within).await {
            panic!(
                "{} of {} accepted events never reached the receiver, e.g. {:?}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(5)]
            );
        }
    }

    /// Waits until every one of `ids` has arrived, or `within` has passed:
    /// then those missing.
    async fn missing_after(&self, ids: &[String], within: Duration) -> Result<(), Vec<String>> {
        let mut rx = self.unique.subscribe();
        let waited = tokio::time::timeout(within, async {
            loop {
                let missing = {
                    let seen = self.seen.lock().unwrap();
                    ids.iter().filter(|id| !seen.contains_key(*id)).count()
                };
                if missing == 0 {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await;
        if waited.is_err() {
            let seen = self.seen.lock().unwrap();
            return Err(ids
                .iter()
                .filter(|id| !seen.contains_key(*id))
                .cloned()
                .collect());
        }
        Ok(())
    }

    /// Requests beyond the first per event.
    fn duplicates(&self) -> usize {
        self.seen.lock().unwrap().values().map(|n| n - 1).sum()
    }
}

/// A hooks folder with one `echo` hook to the receiver, an engine settings
/// file on the NATS queue at `urls`, and a state folder per engine.
struct Cluster {
    dir: tempfile::TempDir,
    hooks: PathBuf,
    config: PathBuf,
}

impl Cluster {
    fn new(receiver: &Tally, urls: &str, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks");
        std::fs::create_dir(&hooks).unwrap();
        let toml = format!("[settings]\nmode = \"echo\"\nurl = \"{}\"\n", receiver.url);
        install(&hooks, "hook", "misbehave", Some(&toml));
        let config = dir.path().join("engine.toml");
        let engine = format!(
            "[queue.nats]\nurl = \"{urls}\"\nack_wait_ms = 2000\n{extra}\n\
             [delivery]\nallow_hosts = [\"127.0.0.1\"]\ntimeout_ms = 5000\n\
             per_receiver_concurrency = 16\n"
        );
        std::fs::write(&config, engine).unwrap();
        Cluster { dir, hooks, config }
    }

    fn engine(&self, i: usize) -> Serve {
        let state = self.dir.path().join(format!("state{i}"));
        Serve::start(&self.hooks, &state, &self.config)
    }
}

/// Posts events `ids` round-robin to `engines`, 64 at a time; returns those
/// accepted (202).
async fn post_all(addrs: &[std::net::SocketAddr], ids: &[String]) -> Vec<String> {
    let client = reqwest::Client::new();
    let event = fixture_json("vm.start.post");
    let sends = ids.iter().enumerate().map(|(i, id)| {
        let mut event = event.clone();
        event["callId"] = id.clone().into();
        let url = format!("http://{}/v1/events", addrs[i % addrs.len()]);
        let client = client.clone();
        async move {
            let answer = client
                .post(url)
                .timeout(Duration::from_secs(60))
                .json(&event)
                .send()
                .await;
            let ok = match answer {
                Ok(r) if r.status() == 202 => true,
                Ok(r) => {
                    eprintln!(
                        "not accepted: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                    false
                }
                Err(e) => {
                    eprintln!("not accepted: {e}");
                    false
                }
            };
            ok.then(|| id.clone())
        }
    });
    futures::stream::iter(sends)
        .buffer_unordered(64)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// [`post_all`], sending again what was refused, as a caller does, for up
/// to `rounds` rounds; returns what was accepted.
async fn post_all_again(
    addrs: &[std::net::SocketAddr],
    ids: &[String],
    rounds: usize,
) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut refused = ids.to_vec();
    for _ in 0..rounds {
        if refused.is_empty() {
            break;
        }
        let now = post_all(addrs, &refused).await;
        refused.retain(|id| !now.contains(id));
        accepted.extend(now);
    }
    accepted
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_share_ten_thousand_events() {
    const N: usize = 10_000;
    let nats = NatsServer::start();
    let receiver = Tally::start(Duration::ZERO).await;
    let cluster = Cluster::new(&receiver, &nats.url, "");
    let engines: Vec<Serve> = (0..3).map(|i| cluster.engine(i)).collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.addr).collect();

    let ids = ids("share", N);
    let accepted = post_all(&addrs, &ids).await;
    // The message, with the engines' warnings, is built only on failure.
    assert_eq!(
        accepted.len(),
        N,
        "every event accepted; the engines said:\n{}",
        engines
            .iter()
            .flat_map(|e| e.log.lock().unwrap().clone())
            .filter(|line| line.contains("ERROR") || line.contains("WARN"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    receiver.wait_all(&accepted, Duration::from_secs(120)).await;
    let mut shares = Vec::new();
    for engine in &engines {
        shares.push(engine.delivered().await);
    }
    let unique = receiver.seen.lock().unwrap().len();
    println!(
        "three engines on JetStream: {N} events, {unique} unique deliveries, {} duplicates; \
         delivered per engine: {shares:?}",
        receiver.duplicates()
    );
    assert!(
        shares.iter().all(|&n| n as usize >= N / 10),
        "each engine sent a share: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_burst_loses_no_accepted_event() {
    const N: usize = 1_500;
    let nats = NatsServer::start();
    // Slow: a burst piles up, queued and claimed, when the kill comes.
    let receiver = Tally::start(Duration::from_millis(50)).await;
    let cluster = Cluster::new(&receiver, &nats.url, "");
    let mut engines: Vec<Serve> = (0..3).map(|i| cluster.engine(i)).collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.addr).collect();

    let ids = ids("failover", N);
    let (first, second) = ids.split_at(N / 2);
    let mut accepted = post_all(&addrs, first).await;
    assert_eq!(accepted.len(), N / 2);
    // Killed with deliveries in flight, claimed and queued.
    let mut rx = receiver.unique.subscribe();
    rx.wait_for(|&n| n >= 50).await.unwrap();
    engines.remove(0).kill();
    let before = receiver.requests.load(std::sync::atomic::Ordering::Relaxed);
    accepted.extend(post_all(&addrs[1..], second).await);
    assert_eq!(accepted.len(), N, "the live engines accept the rest");
    receiver.wait_all(&accepted, Duration::from_secs(120)).await;
    println!(
        "one of three engines SIGKILLed: {N} events accepted, {before} requests before the \
         kill; all delivered, {} duplicates",
        receiver.duplicates()
    );
    drop(engines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_burst_loses_no_accepted_event() {
    const N: usize = 1_500;
    let mut nodes = NatsServer::cluster(3);
    let urls = nodes
        .iter()
        .map(|n| n.url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let receiver = Tally::start(Duration::from_millis(5)).await;
    let cluster = Cluster::new(&receiver, &urls, "replicas = 3");
    let engines: Vec<Serve> = (0..3).map(|i| cluster.engine(i)).collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.addr).collect();

    let ids = ids("replicated", N);
    let (first, second) = ids.split_at(N / 2);
    // A publish can time out on a loaded machine even before the kill: the
    // caller sends it again.
    let mut accepted = post_all_again(&addrs, first, 10).await;
    assert_eq!(
        accepted.len(),
        N / 2,
        "the healthy cluster accepts the first half"
    );
    let mut rx = receiver.unique.subscribe();
    rx.wait_for(|&n| n >= 50).await.unwrap();
    nodes[0].kill();
    // Events sent while the cluster elects new leaders may be refused
    // (the caller retries them); every accepted one must arrive.
    accepted.extend(post_all(&addrs, second).await);
    assert!(accepted.len() >= N / 2, "{} accepted", accepted.len());
    if let Err(missing) = receiver
        .missing_after(&accepted, Duration::from_secs(120))
        .await
    {
        let urls: Vec<&str> = nodes[1..].iter().map(|n| n.url.as_str()).collect();
        let js = async_nats::jetstream::new(async_nats::connect(urls).await.unwrap());
        let kept: Vec<String> = (0..3)
            .map(|i| {
                let db = cluster.dir.path().join(format!("state{i}/nats-spill.db"));
                let Ok(db) = rusqlite::Connection::open(&db) else {
                    return format!("engine {i}: no spill");
                };
                let rows: Result<Vec<(String, i64)>, _> = db
                    .prepare("SELECT kind, count(*) FROM spilled GROUP BY kind")
                    .and_then(|mut q| {
                        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect::<Result<Vec<_>, _>>()
                    });
                format!("engine {i}: {rows:?}")
            })
            .collect();
        panic!(
            "{} of {} accepted events never reached the receiver; kept: {kept:?}; {}",
            missing.len(),
            accepted.len(),
            explain_missing(&js, &engines, &missing).await
        );
    }
    println!(
        "one of three NATS nodes SIGKILLed (replicas = 3): {} of {N} events accepted, all \
         delivered, {} duplicates",
        accepted.len(),
        receiver.duplicates()
    );
    drop(engines);
}

/// Which node of three a test kills.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    /// The leader of the deliveries stream.
    StreamLeader,
    /// The leader of JetStream's meta group (streams and consumers).
    MetaLeader,
    /// A node that leads no stream of the queue and not the meta group.
    Follower,
}

/// A node of three SIGKILLed a third of the way into 3,000 post events
/// from 8 clients on two engines (`replicas = 3`), in turn: the leader of
/// the deliveries stream, the leader of the meta group, and a node that
/// leads nothing. The engines neither refuse nor stop accepting for 3 s
/// (what waits a second for a leader is kept on the engine's disk, then
/// forwarded), every accepted event is delivered, and the node, restarted,
/// rejoins. One after the other: three clusters at once would slow this
/// 2-core machine into elections of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_nats_node_costs_no_refusal_and_no_long_pause() {
    for victim in [Victim::StreamLeader, Victim::MetaLeader, Victim::Follower] {
        lose_a_node(victim).await;
    }
}

/// Kills `victim` mid-burst (see the test above). Measured in the same
/// run: how long JetStream took to elect new leaders for what the victim
/// led, the floor under any pause in accepting.
async fn lose_a_node(which: Victim) {
    use async_nats::jetstream;
    use std::time::Instant;
    const N: usize = 3_000;
    const CLIENTS: usize = 8;
    let mut nodes = NatsServer::cluster(3);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let receiver = Tally::start(Duration::ZERO).await;
    let cluster = Cluster::new(&receiver, &urls.join(","), "replicas = 3");
    let engines: Vec<Serve> = (0..2).map(|i| cluster.engine(i)).collect();
    let addrs: Vec<_> = engines.iter().map(|e| e.addr).collect();
    let all: Vec<&str> = urls.iter().map(String::as_str).collect();
    let js = jetstream::new(async_nats::connect(all).await.unwrap());
    const STREAMS: [&str; 5] = ["DELIVERIES", "DEAD", "DELIVERED", "JOURNAL", "KEYS"];
    let leader_of = async |js: &jetstream::Context, stream: &str| -> Option<String> {
        crate::nats_server::stream_leader(js, &format!("WASMHOOKS_{stream}")).await
    };
    let meta_leader = |node: &NatsServer| -> Option<String> {
        let jsz: serde_json::Value = serde_json::from_str(&node.monitor_get("/jsz")?).ok()?;
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    };
    let meta = meta_leader(&nodes[0]).expect("a meta leader");
    let mut leaders = Vec::new();
    for stream in STREAMS {
        leaders.push(
            leader_of(&js, stream)
                .await
                .expect("every stream has a leader"),
        );
    }
    let name = match which {
        Victim::StreamLeader => leaders[0].clone(),
        Victim::MetaLeader => meta.clone(),
        Victim::Follower => {
            // Leaders are placed at random: move them off one node that
            // is not the meta leader (a stream's leader steps down to
            // another node) until it leads nothing.
            let quiet = (0..3)
                .map(|i| format!("node{i}"))
                .find(|n| *n != meta)
                .unwrap();
            for _ in 0..20 {
                let mut led = Vec::new();
                for stream in STREAMS {
                    if leader_of(&js, stream).await.as_deref() == Some(quiet.as_str()) {
                        led.push(stream);
                    }
                }
                if led.is_empty() {
                    break;
                }
                for stream in led {
                    let _: Result<serde_json::Value, _> = js
                        .request(
                            format!("STREAM.LEADER.STEPDOWN.WASMHOOKS_{stream}"),
                            &serde_json::json!({}),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await; // polling its state
            }
            quiet
        }
    };
    let victim: usize = name.trim_start_matches("node").parse().unwrap();
    // What the victim leads, whose new leaders the pause waits for.
    let mut led = Vec::new();
    for stream in STREAMS {
        if leader_of(&js, stream).await.as_deref() == Some(name.as_str()) {
            led.push(stream);
        }
    }
    let leads_meta = meta == name;
    if which == Victim::Follower {
        for stream in STREAMS {
            assert_ne!(
                leader_of(&js, stream).await.as_deref(),
                Some(name.as_str()),
                "{stream}"
            );
        }
        assert!(!leads_meta);
    }

    // 8 clients, each sending its share one event at a time.
    let accepted = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let (count, mut counted) = watch::channel(0usize);
    let count = Arc::new(count);
    let client = reqwest::Client::new();
    let event = fixture_json("vm.start.post");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, event, accepted, count) = (
                client.clone(),
                event.clone(),
                accepted.clone(),
                count.clone(),
            );
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let mut refused = Vec::new();
                for i in (c..N).step_by(CLIENTS) {
                    let id = format!("lost-leader-{i}");
                    let mut event = event.clone();
                    event["callId"] = id.clone().into();
                    let answer = client
                        .post(format!("http://{}/v1/events", addrs[i % addrs.len()]))
                        .timeout(Duration::from_secs(60))
                        .json(&event)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status() == 202 => {
                            accepted.lock().unwrap().push((Instant::now(), id));
                            count.send_modify(|n| *n += 1);
                        }
                        Ok(r) => refused.push(format!(
                            "{}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => refused.push(e.to_string()),
                    }
                }
                refused
            })
        })
        .collect();
    counted.wait_for(|&n| n >= N / 3).await.unwrap();
    nodes[victim].kill();
    let killed = Instant::now();
    // How long JetStream takes to elect a new leader (polled through the
    // surviving nodes).
    let survivors = crate::nats_server::survivors(&nodes, victim);
    let watcher = jetstream::new(async_nats::connect(survivors).await.unwrap());
    let election = loop {
        let mut stream_led = true;
        for stream in &led {
            stream_led &= leader_of(&watcher, stream).await.is_some_and(|l| l != name);
        }
        let meta_led = !leads_meta
            || nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .any(|(_, n)| meta_leader(n).is_some_and(|l| l != name));
        if stream_led && meta_led {
            break killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling its state
    };
    let mut refused = Vec::new();
    for c in clients {
        refused.extend(c.await.unwrap());
    }
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    let mut times: Vec<Instant> = accepted.iter().map(|(t, _)| *t).collect();
    times.sort();
    let longest_pause = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let ids: Vec<String> = accepted.into_iter().map(|(_, id)| id).collect();
    if let Err(missing) = receiver.missing_after(&ids, Duration::from_secs(120)).await {
        let said = explain_missing(&watcher, &engines, &missing).await;
        panic!(
            "{which:?} ({name}; leading {led:?}): {} of {} accepted events never reached the \
             receiver: {said}",
            missing.len(),
            ids.len(),
        );
    }
    let mut kept = 0;
    for engine in &engines {
        kept += engine.metric("wasmhooks_queue_kept_locally_total").await;
    }
    println!(
        "{which:?} ({name}; leading {led:?}, meta leader: {leads_meta}) \
         SIGKILLed: {} of {N} events accepted, {} refused (e.g. {:?}); JetStream had new \
         leaders in {election:.1?}; the longest pause between two accepted events: \
         {longest_pause:.1?}; {kept} kept on the engines' disks meanwhile; all delivered, \
         {} duplicates",
        ids.len(),
        refused.len(),
        refused.first(),
        receiver.duplicates()
    );
    assert!(
        refused.is_empty(),
        "{} refused, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    // The election itself (4 to 9 s, nats-server's own timeout) is not
    // waited through: what waits `spill_after_ms` (1 s) is kept on the
    // engine's disk and answered.
    assert!(
        longest_pause <= Duration::from_secs(3),
        "no 3 s without an accepted event: paused {longest_pause:?} (the election took \
         {election:?})"
    );
    // Restarted, the node rejoins: the stream has its three replicas again.
    nodes[victim].restart();
    nodes[victim].wait_ready();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = watcher.get_stream("WASMHOOKS_DELIVERIES").await.unwrap();
        let current = match stream.info().await {
            Ok(info) => info
                .cluster
                .as_ref()
                .map(|c| c.replicas.iter().filter(|r| r.current).count()),
            Err(_) => None,
        };
        if current == Some(2) {
            break; // the leader and two current followers
        }
        assert!(
            Instant::now() < deadline,
            "the node did not rejoin: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // polling its state
    }
    drop(engines);
}

/// With JetStream gone, an engine keeps what it accepts on its disk (a
/// journal entry, then the commit, each waits `spill_after_ms`, then is
/// kept and answered), but only for as long as an election would take
/// (`election_wait_ms`): past it, events are refused (503), as a queue
/// that is down. SIGKILLed with events kept, the engine forwards them at
/// its next start (and runs again those whose hooks had not finished), and
/// all are delivered. Every event is journaled first here
/// (`post_inline_ms = 0`); the node-loss test above commits them inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_kept_on_the_engines_disk_survive_its_crash() {
    use std::time::Instant;
    let mut nats = NatsServer::start();
    let receiver = Tally::start(Duration::ZERO).await;
    let cluster = Cluster::new(
        &receiver,
        &nats.url,
        "spill_after_ms = 200\nelection_wait_ms = 3000",
    );
    let config = std::fs::read_to_string(&cluster.config).unwrap();
    std::fs::write(&cluster.config, format!("post_inline_ms = 0\n{config}")).unwrap();
    let engine = cluster.engine(0);
    let client = reqwest::Client::new();
    let post = |id: String| {
        let mut event = fixture_json("vm.start.post");
        event["callId"] = id.into();
        client
            .post(format!("http://{}/v1/events", engine.addr))
            .timeout(Duration::from_secs(30))
            .json(&event)
            .send()
    };
    nats.kill();
    // Accepted while JetStream is away, until it has been away too long.
    let mut kept = Vec::new();
    let first = Instant::now();
    let refused = loop {
        let id = format!("kept-{}", kept.len());
        let answer = post(id.clone()).await.unwrap();
        match answer.status().as_u16() {
            202 => kept.push(id),
            503 => break (first.elapsed(), answer.text().await.unwrap()),
            other => panic!("{other}: {}", answer.text().await.unwrap()),
        }
        assert!(first.elapsed() < Duration::from_secs(30), "never refused");
    };
    assert!(kept.len() >= 2, "{} kept", kept.len());
    assert!(
        refused.0 >= Duration::from_secs(3),
        "refused only once what was kept had waited election_wait_ms: after {:?}",
        refused.0
    );
    assert!(refused.1.contains("NATS"), "{}", refused.1);
    let readyz = reqwest::get(format!("http://{}/readyz", engine.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(readyz.starts_with("degraded"), "{readyz}");
    assert!(
        engine.metric("wasmhooks_queue_kept_locally_now").await >= kept.len() as u64,
        "the gauge counts what is kept"
    );
    engine.kill();
    nats.restart();
    nats.wait_ready();
    let engine = cluster.engine(0);
    receiver.wait_all(&kept, Duration::from_secs(60)).await;
    println!(
        "JetStream away: {} events kept on the engine's disk and answered, then refused after \
         {:.1?}; the engine SIGKILLed, restarted: all delivered, {} duplicates",
        kept.len(),
        refused.0,
        receiver.duplicates()
    );
    drop(engine);
}

/// Where `missing` events are (their message and subject in the deliveries
/// stream, or nowhere), the consumers' counts, and what the engines logged
/// (warnings, errors, and lines naming a missing event).
async fn explain_missing(
    js: &async_nats::jetstream::Context,
    engines: &[Serve],
    missing: &[String],
) -> String {
    let mut stream = js.get_stream("WASMHOOKS_DELIVERIES").await.unwrap();
    let info = stream.info().await.unwrap().state.clone();
    let mut found = Vec::new();
    for seq in info.first_sequence..=info.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let text = String::from_utf8_lossy(&m.payload);
            for id in missing {
                if text.contains(&format!("\"{id}\"")) || text.contains(&format!("\\\"{id}\\\"")) {
                    found.push(format!("{id} at {seq} on {}", m.subject));
                }
            }
        }
    }
    let mut consumers = Vec::new();
    let mut list = stream.consumers();
    while let Some(Ok(c)) = list.next().await {
        consumers.push(format!(
            "{}: pending {} ack pending {} redelivered {} delivered {:?} ack floor {:?}",
            c.name,
            c.num_pending,
            c.num_ack_pending,
            c.num_redelivered,
            c.delivered.stream_sequence,
            c.ack_floor.stream_sequence
        ));
    }
    let said: Vec<String> = engines
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            e.log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("panicked")
                        || l.contains("spill")
                        || missing.iter().any(|id| l.contains(id.as_str()))
                })
                .take(60)
                .map(|l| format!("engine {i}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    format!(
        "{missing:?}\nin the deliveries stream ({info:?}): {found:?}\nconsumers: \
         {consumers:?}\nthe engines said:\n{}",
        said.join("\n")
    )
}
