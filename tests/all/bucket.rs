//! A shared hooks bucket on NATS JetStream: three engines follow one
//! bucket; a push switches them all, each pre event is judged by one set
//! whole, a broken set keeps the last good one everywhere (each engine
//! says why), a late engine loads the current set, and an engine killed
//! during a push serves it once back.

use crate::guests::{misbehave_version as version, version_mark as mark};
use crate::nats_server::NatsServer;
use crate::{Serve, eventually, fixture_json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmhooks::bucket::{BucketError, push};
use wasmhooks::config::BucketConfig;

/// Two gates of version `k`, in monitor mode: each pre event's verdict
/// lists both, each with its version mark as the reason.
fn set(root: &Path, k: u32) -> PathBuf {
    let dir = root.join(format!("set-{k}"));
    std::fs::create_dir_all(&dir).unwrap();
    for gate in ["g1", "g2"] {
        std::fs::write(dir.join(format!("{gate}.wasm")), version(k)).unwrap();
        std::fs::write(
            dir.join(format!("{gate}.toml")),
            "mode = \"monitor\"\n[settings]\nmode = \"deny\"\n",
        )
        .unwrap();
    }
    dir
}

async fn get(client: &reqwest::Client, serve: &Serve, path: &str) -> Value {
    client
        .get(format!("http://{}{path}", serve.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The version marks a pre event's verdict came from, one per gate.
async fn judged_by(client: &reqwest::Client, addr: std::net::SocketAddr) -> Vec<String> {
    let verdict: Value = client
        .post(format!("http://{addr}/v1/events"))
        .json(&fixture_json("vm.start.pre"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    verdict["would_deny"]
        .as_array()
        .unwrap_or_else(|| panic!("a verdict: {verdict}"))
        .iter()
        .map(|w| w["reason"].as_str().unwrap().to_owned())
        .collect()
}

async fn serving(client: &reqwest::Client, serve: &Serve) -> Value {
    get(client, serve, "/v1/hooks/set").await
}

/// The bucket on this server.
fn bucket_on(nats: &NatsServer) -> BucketConfig {
    BucketConfig {
        url: nats.url.clone(),
        ..BucketConfig::default()
    }
}

/// The engines' settings file, with `more` at its end.
fn engine_toml(root: &Path, more: &str) -> PathBuf {
    let config = root.join("engine.toml");
    std::fs::write(
        &config,
        format!("dedup_window_secs = 0\nfsync = false\n[limits]\ndeadline_ms = 5000\n{more}"),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn three_engines_follow_one_bucket_set_by_set() {
    let nats = NatsServer::start();
    let bucket = bucket_on(&nats);
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = engine_toml(root, "");
    let url = nats.url.clone();
    let start = |name: &str| Serve::start(Path::new(&url), &root.join(name), &config);
    let client = reqwest::Client::new();

    // An empty folder is refused: it would unload every hook everywhere.
    std::fs::create_dir(root.join("empty")).unwrap();
    assert!(matches!(
        push(&bucket, &root.join("empty")).await,
        Err(BucketError::Empty { .. })
    ));

    // A secret in NAME.toml would be readable in the bucket, and a
    // relative `file:` one not found on the engines: refused.
    for secret in ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "file:signing.key"] {
        let leaky = set(root, 9);
        std::fs::write(
            leaky.join("g1.toml"),
            format!("secret = \"{secret}\"\n[settings]\nmode = \"deny\"\n"),
        )
        .unwrap();
        assert!(
            matches!(push(&bucket, &leaky).await, Err(BucketError::Secret { .. })),
            "{secret}"
        );
    }

    let v1 = push(&bucket, &set(root, 1)).await.unwrap().version;
    let e1 = start("e1");
    let mut e2 = start("e2");
    for e in [&e1, &e2] {
        assert_eq!(serving(&client, e).await["version"], v1);
        assert_eq!(judged_by(&client, e.addr).await, [mark(1), mark(1)]);
    }

    // A push while pre events flow: each verdict is one set's, whole.
    let stop = Arc::new(AtomicBool::new(false));
    let judge = |e: &Serve| {
        let (client, addr, stop) = (client.clone(), e.addr, stop.clone());
        tokio::spawn(async move {
            let mut verdicts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                verdicts.push(judged_by(&client, addr).await);
            }
            verdicts
        })
    };
    let judges = [judge(&e1), judge(&e2)];
    let pushed = Instant::now();
    let v2 = push(&bucket, &set(root, 2)).await.unwrap().version;
    assert!(v2 > v1);
    for e in [&e1, &e2] {
        eventually("set 2 live on both engines", || async {
            serving(&client, e).await["version"] == v2
        })
        .await;
    }
    let switched = pushed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for judge in judges {
        for marks in judge.await.unwrap() {
            assert_eq!(marks.len(), 2, "both gates judged: {marks:?}");
            assert_eq!(marks[0], marks[1], "one set per verdict: {marks:?}");
            seen.insert(marks[0].clone());
        }
    }
    assert!(seen.contains(&mark(2)), "{seen:?}");
    println!("set {v2} live on 2 engines {switched:?} after its push (debug build, new modules)");
    assert!(switched < Duration::from_secs(20), "{switched:?}");

    // An engine started later serves the current set.
    let e3 = start("e3");
    assert_eq!(serving(&client, &e3).await["version"], v2);
    assert_eq!(judged_by(&client, e3.addr).await, [mark(2), mark(2)]);

    // A broken set: every engine keeps set 2 and says why.
    let broken = set(root, 3);
    std::fs::write(broken.join("g2.wasm"), b"not webassembly").unwrap();
    let v3 = push(&bucket, &broken).await.unwrap().version;
    for e in [&e1, &e2, &e3] {
        eventually("set 3 refused", || async {
            serving(&client, e).await["refused"]["version"] == v3
        })
        .await;
        let set = serving(&client, e).await;
        assert_eq!(set["version"], v2, "{set}");
        let why = set["refused"]["reasons"][0].as_str().unwrap();
        assert!(why.contains("g2") && why.contains("compile"), "{why}");
        assert_eq!(judged_by(&client, e.addr).await, [mark(2), mark(2)]);
    }
    // Any engine answers for all three.
    eventually("three reports of set 3 refused", || async {
        let engines = get(&client, &e1, "/v1/engines").await;
        let engines = engines.as_array().unwrap();
        engines.len() == 3
            && engines
                .iter()
                .all(|e| e["set"]["version"] == v2 && e["set"]["refused"]["version"] == v3)
    })
    .await;

    // A push as an engine dies: back, it serves the new set.
    let v4 = push(&bucket, &set(root, 4)).await.unwrap().version;
    e2.kill();
    e2 = start("e2");
    for e in [&e1, &e2, &e3] {
        eventually("set 4 live on all three", || async {
            serving(&client, e).await["version"] == v4
        })
        .await;
        assert_eq!(judged_by(&client, e.addr).await, [mark(4), mark(4)]);
    }
    // And it restarts from its own copy without NATS (once its report
    // says set 4, which it writes after it kept the set as its good one).
    let pid = format!("/{}", e2.pid());
    eventually("e2 reports set 4", || async {
        let engines = get(&client, &e1, "/v1/engines").await;
        engines
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["engine"].as_str().unwrap().ends_with(&pid) && e["set"]["version"] == v4)
    })
    .await;
    drop(nats);
    e2.kill();
    let e2 = start("e2");
    assert_eq!(serving(&client, &e2).await["version"], v4);
    assert_eq!(judged_by(&client, e2.addr).await, [mark(4), mark(4)]);
}

/// A set from the bucket is checked as a folder is: on an engine with
/// `[trust]`, each module's signature; and on every engine, each file
/// against the digest the set names.
#[tokio::test(flavor = "multi_thread")]
async fn a_set_from_the_bucket_needs_its_signatures_and_its_digests() {
    use wasmhooks::trust::SecretKey;
    let nats = NatsServer::start();
    let bucket = bucket_on(&nats);
    let alice = SecretKey::generate().unwrap();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let config = engine_toml(root, &format!("[trust]\nkeys = [\"{}\"]\n", alice.public()));
    let signed = |k: u32| {
        let dir = set(root, k);
        for gate in ["g1", "g2"] {
            std::fs::write(
                dir.join(format!("{gate}.sig")),
                alice.sign(&version(k)).to_string(),
            )
            .unwrap();
        }
        dir
    };
    let v1 = push(&bucket, &signed(1)).await.unwrap().version;
    let engine = Serve::start(Path::new(&nats.url), &root.join("e"), &config);
    let client = reqwest::Client::new();
    assert_eq!(serving(&client, &engine).await["version"], v1);
    let hooks = get(&client, &engine, "/v1/hooks").await;
    assert!(
        hooks
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["signed_by"] == alice.public().id()),
        "{hooks}"
    );

    // Unsigned: refused, set 1 serves.
    let v2 = push(&bucket, &set(root, 2)).await.unwrap().version;
    eventually("the unsigned set refused", || async {
        serving(&client, &engine).await["refused"]["version"] == v2
    })
    .await;
    let why = serving(&client, &engine).await["refused"]["reasons"][0].to_string();
    assert!(why.contains("signature failed"), "{why}");

    // Set 1 again, but its g1.wasm names the digest of version 3, and the
    // file under that name holds version 4: refused by its digest.
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let files = js.get_object_store("WASMHOOKS_HOOK_FILES").await.unwrap();
    let sets = js.get_key_value("WASMHOOKS_HOOK_SETS").await.unwrap();
    let three = wasmhooks_digest(&version(3));
    files
        .put(
            format!("sha256-{three}").as_str(),
            &mut version(4).as_slice(),
        )
        .await
        .unwrap();
    let first = sets
        .entry_for_revision("current", v1)
        .await
        .unwrap()
        .unwrap();
    let mut manifest: Value = serde_json::from_slice(&first.value).unwrap();
    manifest["hooks"]["g1"]["wasm"] = three.clone().into();
    let v3 = sets
        .put("current", serde_json::to_vec(&manifest).unwrap().into())
        .await
        .unwrap();
    eventually("the tampered set refused", || async {
        serving(&client, &engine).await["refused"]["version"] == v3
    })
    .await;
    let set = serving(&client, &engine).await;
    assert_eq!(set["version"], v1, "{set}");
    let why = set["refused"]["reasons"][0].as_str().unwrap();
    assert!(why.contains("g1.wasm") && why.contains(&three), "{why}");
    assert_eq!(judged_by(&client, engine.addr).await, [mark(1), mark(1)]);

    // A set naming a file the bucket does not hold: refused, saying which.
    manifest["hooks"]["g1"]["wasm"] = wasmhooks_digest(&version(6)).into();
    let v4 = sets
        .put("current", serde_json::to_vec(&manifest).unwrap().into())
        .await
        .unwrap();
    eventually("the set with a missing file refused", || async {
        serving(&client, &engine).await["refused"]["version"] == v4
    })
    .await;
    let why = serving(&client, &engine).await["refused"]["reasons"][0].to_string();
    assert!(
        why.contains("g1.wasm") && why.contains("not in the hooks bucket"),
        "{why}"
    );
}

fn wasmhooks_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `wasmhooks hooks push` loads the folder first and pushes nothing that
/// fails; `wasmhooks hooks engines` lists the engines.
#[tokio::test(flavor = "multi_thread")]
async fn the_push_command_checks_the_folder_first() {
    let nats = NatsServer::start();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wasmhooks"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WASMHOOKS_") {
                command.env_remove(name);
            }
        }
        let out = command.args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let good = set(root, 1);
    let broken = set(root, 2);
    std::fs::write(broken.join("g1.wasm"), b"not webassembly").unwrap();
    let url = nats.url.as_str();
    let (code, text) = run(&["hooks", "push", broken.to_str().unwrap(), "--bucket", url]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not pushed") && text.contains("g1"), "{text}");
    // An engine on a bucket with no set yet starts, and is not ready.
    let config = engine_toml(root, "");
    let engine = Serve::start(Path::new(url), &root.join("e"), &config);
    let client = reqwest::Client::new();
    let readyz = || async {
        let url = format!("http://{}/readyz", engine.addr);
        client.get(url).send().await.unwrap().text().await.unwrap()
    };
    assert!(readyz().await.starts_with("degraded: no set of hooks"));
    let (code, text) = run(&["hooks", "push", good.to_str().unwrap(), "--bucket", url]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("set 1: 2 hooks"), "{text}");
    eventually("the engine ready with set 1", || async {
        readyz().await == "ready\n"
    })
    .await;
    let (code, text) = run(&["hooks", "engines", "--bucket", url]);
    assert_eq!(code, Some(0), "{text}");
    let line = text.lines().nth(2).unwrap_or_default();
    assert_eq!(line.split_whitespace().nth(1), Some("1"), "{text}");

    // Pushed anyway, the broken set is refused: the engine is behind.
    let (code, text) = run(&[
        "hooks",
        "push",
        broken.to_str().unwrap(),
        "--bucket",
        url,
        "--no-check",
    ]);
    assert_eq!(code, Some(0), "{text}");
    eventually("the broken set refused", || async {
        let url = format!("http://{}/v1/hooks/set", engine.addr);
        let set: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        set["refused"]["version"] == 2
    })
    .await;
    let (code, text) = run(&["hooks", "engines", "--bucket", url]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("behind") && text.contains("compile"),
        "{text}"
    );

    // One state folder, one engine.
    let mut same = wasmhooks::config::Config {
        state_dir: Some(root.join("e")),
        hooks_bucket: Some(bucket_on(&nats)),
        ..wasmhooks::config::Config::default()
    };
    same.queue = wasmhooks::config::QueueConfig::Memory;
    match wasmhooks::Engine::new(same).await {
        Err(wasmhooks::Error::Bucket(BucketError::Local { .. })) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second engine on the same state folder started"),
    }
}
