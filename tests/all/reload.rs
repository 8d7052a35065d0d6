//! Hot reload: the hooks folder is live, swaps are atomic, and a bad file
//! never replaces a good one.

use crate::{Receiver, engine, fixture, test_config, wasm};
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use wasmhooks::{Engine, Event, HookState, HookStatus, Stage};

use crate::guests::{misbehave_version as version, place, version_mark as mark};

pub(crate) fn echo_toml(receiver: &Receiver, mark: &str) -> String {
    format!(
        "[settings]\nmode = \"echo\"\nurl = \"{}\"\nmark = \"{mark}\"\n",
        receiver.url("/echo")
    )
}

/// A hooks folder holding version 0 of an echo hook, and an engine serving it.
async fn echo_hook(receiver: &Receiver, mark: &str) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    place(
        dir.path(),
        "echo.toml",
        echo_toml(receiver, mark).as_bytes(),
    );
    place(dir.path(), "echo.wasm", &version(0));
    let engine = engine(dir.path()).await;
    (dir, engine)
}

/// Waits (up to 30 s) until the hooks' status satisfies `ready`, re-checking
/// after each change the engine announces.
pub(crate) async fn wait_hooks(
    engine: &Engine,
    what: &str,
    ready: impl Fn(&[HookStatus]) -> bool,
) -> Vec<HookStatus> {
    let mut changes = engine.hook_changes();
    let wait = async {
        loop {
            let hooks = engine.hooks();
            if ready(&hooks) {
                return hooks;
            }
            changes.changed().await.unwrap();
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(hooks) => hooks,
        Err(_) => panic!(
            "timed out waiting for: {what}; hooks are {:#?}",
            engine.hooks()
        ),
    }
}

pub(crate) fn event(call_id: &str) -> Event {
    let mut value: serde_json::Value =
        serde_json::from_slice(&crate::fixture_bytes("vm.start.post")).unwrap();
    value["callId"] = call_id.into();
    Event::from_value(value).unwrap()
}

/// Waits until a delivery with this version mark has arrived.
async fn wait_version(receiver: &Receiver, k: u32) {
    let wanted = mark(k);
    receiver
        .wait_until(&format!("a delivery from version {k}"), |got| {
            got.iter().any(|r| r.header("x-version") == wanted)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_hook_under_load_loses_no_event_and_handles_each_once() {
    let receiver = Receiver::start().await;
    let (dir, engine) = echo_hook(&receiver, "m").await;
    let d = dir.path();

    // A bounded, paced stream of post events, each with its own call id.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (engine, stop, sent) = (engine.clone(), stop.clone(), sent.clone());
        async move {
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 50_000 {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                engine.post(event(&format!("load-{i}"))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await; // pacing, not synchronisation
            }
        }
    });

    let versions = 5;
    for k in 1..=versions {
        place(d, "echo.wasm", &version(k));
        wait_version(&receiver, k).await;
    }
    let serving = engine.hooks()[0].hash.clone();

    // A truncated and a garbage replacement: reported, and the old version keeps serving.
    let full = version(versions + 1);
    place(d, "echo.wasm", &full[..full.len() / 2]);
    let hooks = wait_hooks(&engine, "the truncated file is reported", |h| {
        h[0].load_failures == 1
    })
    .await;
    assert_eq!(hooks[0].state, HookState::Live);
    assert_eq!(
        hooks[0].hash, serving,
        "the last good version keeps serving"
    );
    let error = hooks[0].last_error.as_ref().unwrap();
    assert_eq!(
        (error.stage, error.file.as_path()),
        (Stage::Compile, d.join("echo.wasm").as_path())
    );
    assert!(
        error.reason.contains("truncated") || error.reason.contains("unexpected end"),
        "{}",
        error.reason
    );

    place(
        d,
        "echo.wasm",
        b"\0asm\x0d\0\x01\0 garbage after a component header",
    );
    let hooks = wait_hooks(&engine, "the garbage file is reported", |h| {
        h[0].load_failures == 2
    })
    .await;
    assert_eq!(hooks[0].hash, serving);
    let before = receiver.received().len();
    receiver.wait_for(before + 10).await; // still delivering

    // Fixing the file recovers without a restart.
    place(d, "echo.wasm", &version(versions + 2));
    wait_version(&receiver, versions + 2).await;
    let hooks = engine.hooks();
    assert!(hooks[0].last_error.is_none(), "{:?}", hooks[0].last_error);
    assert_eq!(hooks[0].loads, u64::from(versions) + 2);

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    engine.drain().await;

    let sent = sent.load(Ordering::Relaxed);
    let mut handled: HashMap<String, Vec<String>> = HashMap::new();
    for r in receiver.received() {
        handled
            .entry(r.header("x-call-id").to_owned())
            .or_default()
            .push(r.header("x-version").to_owned());
    }
    for i in 0..sent {
        let versions = handled
            .get(&format!("load-{i}"))
            .unwrap_or_else(|| panic!("event load-{i} of {sent} was lost"));
        assert_eq!(
            versions.len(),
            1,
            "event load-{i} was handled {} times: {versions:?}",
            versions.len()
        );
    }
    assert_eq!(handled.len(), sent);
    let seen: std::collections::BTreeSet<&String> = handled.values().flatten().collect();
    for k in 0..=versions {
        assert!(
            seen.contains(&mark(k)),
            "version {k} handled events: {seen:?}"
        );
    }
    assert!(
        !seen.contains(&mark(versions + 1)),
        "the truncated version never served"
    );
    eprintln!(
        "{sent} events over {} versions, each handled once",
        versions + 2
    );
}

#[tokio::test]
async fn removing_a_hook_unloads_it_and_its_queued_deliveries_still_go_out() {
    // The first delivery attempt fails, so the delivery is queued for a retry
    // when the hook is removed.
    let receiver = crate::failing_once(StatusCode::SERVICE_UNAVAILABLE).await;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = dir.path();
    place(d, "echo.toml", echo_toml(&receiver, "m").as_bytes());
    place(d, "echo.wasm", &version(0));
    let mut config = test_config(d);
    config.delivery.retry_schedule_ms = vec![500];
    let engine = Engine::new(config).await.unwrap();

    engine.post(event("before")).await.unwrap();
    receiver.wait_for(1).await;
    std::fs::remove_file(d.join("echo.wasm")).unwrap();
    wait_hooks(&engine, "the hook is unloaded", |h| h.is_empty()).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(
        got[1].header("x-call-id"),
        "before",
        "the queued retry still went out"
    );

    engine.post(event("while-gone")).await.unwrap();
    engine.drain().await;
    assert_eq!(receiver.received().len(), 2, "no hook, no delivery");

    // Moving a file in from outside the folder counts as adding it.
    std::fs::write(outside.path().join("echo.wasm"), version(1)).unwrap();
    std::fs::rename(outside.path().join("echo.wasm"), d.join("echo.wasm")).unwrap();
    wait_hooks(&engine, "the hook is back", |h| {
        h.len() == 1 && h[0].state == HookState::Live
    })
    .await;
    engine.post(event("after")).await.unwrap();
    let got = receiver.wait_for(3).await;
    assert_eq!(got[2].header("x-call-id"), "after");
    assert_eq!(got[2].header("x-version"), mark(1));

    // And moving it out counts as removing it.
    std::fs::rename(d.join("echo.wasm"), outside.path().join("echo.wasm")).unwrap();
    wait_hooks(&engine, "the hook is gone again", |h| h.is_empty()).await;
}

#[tokio::test]
async fn a_settings_change_re_inits_the_hook() {
    let receiver = Receiver::start().await;
    let (dir, engine) = echo_hook(&receiver, "first").await;
    let d = dir.path();
    let before = engine.hooks()[0].hash.clone();

    place(d, "echo.toml", echo_toml(&receiver, "second").as_bytes());
    wait_hooks(&engine, "the new settings are live", |h| {
        h[0].hash != before
    })
    .await;
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("x-mark"), "second");

    // Settings the hook refuses: reported against the .toml's hook, old settings keep serving.
    place(d, "echo.toml", b"[settings]\nmode = \"echo\"\n");
    let hooks = wait_hooks(&engine, "the bad settings are reported", |h| {
        h[0].last_error.is_some()
    })
    .await;
    assert_eq!(hooks[0].last_error.as_ref().unwrap().stage, Stage::Setup);
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].header("x-mark"), "second");
}

#[tokio::test]
async fn a_slow_in_place_write_is_never_loaded_half_written() {
    let receiver = Receiver::start().await;
    let (dir, engine) = echo_hook(&receiver, "m").await;
    let d = dir.path();

    // Rewrite the file in place, in chunks, with pauses, while events flow.
    let bytes = version(1);
    let mut file = std::fs::File::create(d.join("echo.wasm")).unwrap();
    let chunks = bytes.chunks(bytes.len() / 8 + 1);
    let during = chunks.len();
    for (i, chunk) in chunks.enumerate() {
        std::io::Write::write_all(&mut file, chunk).unwrap();
        std::io::Write::flush(&mut file).unwrap();
        engine.post(event(&format!("during-{i}"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await; // the writer's pace
    }
    drop(file);
    wait_hooks(&engine, "the finished file is loaded", |h| h[0].loads == 2).await;
    let hooks = engine.hooks();
    assert_eq!(
        hooks[0].load_failures, 0,
        "no partial file was tried: {:?}",
        hooks[0].last_error
    );
    engine.post(event("after")).await.unwrap();
    engine.drain().await;
    for r in receiver.received() {
        let expected = if r.header("x-call-id") == "after" {
            mark(1)
        } else {
            mark(0)
        };
        assert_eq!(r.header("x-version"), expected, "{}", r.header("x-call-id"));
    }
    assert_eq!(receiver.received().len(), during + 1);
}

#[tokio::test]
async fn the_folder_may_appear_and_be_replaced_after_start() {
    let receiver = Receiver::start().await;
    let parent = tempfile::tempdir().unwrap();
    let d = parent.path().join("hooks");
    let mut config = test_config(&d);
    config.state_dir = Some(parent.path().join("state"));
    let engine = Engine::new(config).await.unwrap();
    assert!(engine.hooks().is_empty());

    // Created after start.
    let staging = parent.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    place(&staging, "one.toml", echo_toml(&receiver, "one").as_bytes());
    place(&staging, "one.wasm", &version(0));
    std::fs::rename(&staging, &d).unwrap();
    wait_hooks(&engine, "hook one from the new folder", |h| {
        h.len() == 1 && h[0].name == "one"
    })
    .await;

    // Replaced: the old folder moved away, a new one moved in.
    std::fs::create_dir(&staging).unwrap();
    place(&staging, "two.toml", echo_toml(&receiver, "two").as_bytes());
    place(&staging, "two.wasm", &version(0));
    std::fs::rename(&d, parent.path().join("old")).unwrap();
    std::fs::rename(&staging, &d).unwrap();
    wait_hooks(&engine, "only hook two", |h| {
        h.len() == 1 && h[0].name == "two" && h[0].state == HookState::Live
    })
    .await;

    // Editor and temporary files are ignored; the next real change is seen.
    for junk in [
        ".two.wasm.swp",
        "two.wasm~",
        "4913",
        "two.wasm.part",
        ".#two.toml",
    ] {
        std::fs::write(d.join(junk), b"junk").unwrap();
    }
    place(&d, "two.toml", echo_toml(&receiver, "two-b").as_bytes());
    wait_hooks(&engine, "two re-inited", |h| h[0].loads == 2).await;
    let hooks = engine.hooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].load_failures, 0);
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("x-mark"), "two-b");
}

#[tokio::test]
async fn compiled_hooks_are_cached_on_disk_and_a_corrupt_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("deny"), dir.path().join("deny.wasm")).unwrap();
    std::fs::write(
        dir.path().join("deny.toml"),
        "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n",
    )
    .unwrap();
    let config = || {
        let mut config = test_config(dir.path());
        config.cache_dir = Some(cache.path().to_owned());
        config
    };
    let entries = || -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with(".key"))
            .collect();
        files.sort();
        files
    };

    drop(Engine::new(config()).await.unwrap());
    let files = entries();
    assert_eq!(
        files.len(),
        1,
        "one artifact, no temporary files left: {files:?}"
    );
    assert!(files[0].extension().is_some_and(|e| e == "cwasm"));

    // Corrupt the artifact: the next engine recompiles, rewrites it, and serves.
    let mut bad = std::fs::read(&files[0]).unwrap();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    std::fs::write(&files[0], &bad).unwrap();
    let engine = Engine::new(config()).await.unwrap();
    assert_eq!(engine.hooks()[0].state, HookState::Live);
    assert!(!engine.pre(fixture("vm.delete.pre")).await.unwrap().allowed);
    assert_ne!(
        std::fs::read(&files[0]).unwrap(),
        bad,
        "the corrupt entry was replaced"
    );

    // Garbage of the right name is no better.
    drop(engine); // one engine per state folder
    std::fs::write(&files[0], b"nonsense").unwrap();
    let engine = Engine::new(config()).await.unwrap();
    assert!(!engine.pre(fixture("vm.delete.pre")).await.unwrap().allowed);
    drop(engine);

    // At start, entries unused for 30 days and temporary files older than
    // an hour go; other files stay. An entry is touched whenever it is used.
    let set_age = |path: &std::path::Path, days: u64| {
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(then)
            .unwrap();
    };
    let old_entry = cache.path().join("0123abcd-0000000000000000.cwasm");
    let recent_entry = cache.path().join("4567abcd-0000000000000000.cwasm");
    let old_tmp = cache.path().join(".0123abcd.42.tmp");
    let other = cache.path().join("notes.txt");
    for file in [&old_entry, &recent_entry, &old_tmp, &other] {
        std::fs::write(file, b"x").unwrap();
        set_age(file, 40);
    }
    set_age(&recent_entry, 29);
    let engine = Engine::new(config()).await.unwrap();
    assert!(!engine.pre(fixture("vm.delete.pre")).await.unwrap().allowed);
    let left = entries();
    assert!(
        !left.contains(&old_entry) && !left.contains(&old_tmp),
        "{left:?}"
    );
    assert!(
        left.contains(&recent_entry) && left.contains(&other),
        "{left:?}"
    );
    drop(engine);
    set_age(&files[0], 10);
    let engine = Engine::new(config()).await.unwrap();
    let age = std::fs::metadata(&files[0])
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap();
    assert!(
        age < std::time::Duration::from_secs(86_400),
        "touched on use: {age:?}"
    );
    drop(engine);
}

/// A compiled artifact is native code. An entry planted in the cache (here:
/// another hook's genuine artifact under this hook's name) is recompiled,
/// never loaded; a cache folder others may write to is not used at all.
/// Before: entries were checked with a plain SHA-256 of themselves, so the
/// planted entry ran as the other hook.
#[tokio::test]
async fn a_planted_cache_entry_is_recompiled_and_an_open_cache_folder_unused() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    std::fs::copy(wasm("deny"), dir.path().join("a.wasm")).unwrap();
    std::fs::write(dir.path().join("a.toml"), "[settings]\nprotected = []\n").unwrap();
    std::fs::copy(wasm("misbehave"), dir.path().join("b.wasm")).unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "[settings]\nmode = \"deny\"\nmark = \"b\"\n",
    )
    .unwrap();
    let config = || {
        let mut config = test_config(dir.path());
        config.cache_dir = Some(cache_dir.clone());
        config
    };
    drop(Engine::new(config()).await.unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&cache_dir).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "created private");
    let entry = |wasm: &str| {
        let hash: String = sha2::Sha256::digest(std::fs::read(dir.path().join(wasm)).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&hash))
            .unwrap_or_else(|| panic!("no cache entry for {wasm}"))
    };
    // a's artifact planted as b's.
    std::fs::copy(entry("a.wasm"), entry("b.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("a.wasm")).unwrap();
    let engine = Engine::new(config()).await.unwrap();
    let verdict = engine.pre(fixture("vm.delete.pre")).await.unwrap();
    assert_eq!(
        verdict.reason.as_deref(),
        Some("b"),
        "b runs its own code: {verdict:?}"
    );
    drop(engine);

    // Open to other users: not used (nothing read or written there).
    std::fs::set_permissions(
        &cache_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let before: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::remove_file(entry("b.wasm")).unwrap();
    let engine = Engine::new(config()).await.unwrap();
    assert_eq!(engine.hooks()[0].state, HookState::Live);
    let after: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        after.len(),
        before.len() - 1,
        "no entry written to an open folder"
    );
}

/// A thousand hooks of one content load at once: compiled once, not a
/// thousand times side by side (which overflowed a compiler thread's stack
/// and killed the engine at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_copies_of_one_hook_all_load() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        crate::install(
            dir.path(),
            &format!("deny{i:04}"),
            "deny",
            Some("[settings]\nprotected = []\n"),
        );
    }
    let mut config = crate::test_config(dir.path());
    // Compiled from source: not from an earlier run's cache.
    config.cache_dir = Some(dir.path().join(".cache"));
    let engine = Engine::new(config).await.unwrap();
    let hooks = engine.hooks();
    assert_eq!(hooks.len(), 1000);
    assert!(hooks.iter().all(|h| h.state == wasmhooks::HookState::Live));
}

/// `Engine::reload` (`systemctl reload`, SIGHUP) with the watcher off:
/// it reads the folder again, loading a new hook and a changed one whose
/// size and mtime did not move, and a broken file still leaves the last
/// good version serving.
#[tokio::test]
async fn reload_reads_the_folder_again_with_the_watcher_off() {
    let receiver = Receiver::start().await;
    let state = tempfile::tempdir().unwrap();
    let hooks = state.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    place(&hooks, "echo.toml", echo_toml(&receiver, "").as_bytes());
    place(&hooks, "echo.wasm", &version(0));
    let mut config = test_config(state.path());
    config.hooks_dir = hooks.clone();
    config.watch = false;
    let engine = Engine::new(config).await.unwrap();
    let hash = |engine: &Engine, name: &str| {
        let hooks = engine.hooks();
        let hook = hooks.iter().find(|h| h.name == name);
        hook.map(|h| (h.state, h.hash.clone().unwrap_or_default()))
    };
    let first = hash(&engine, "echo").unwrap();

    // Version 1 has the same size; give it the same mtime too, so that
    // only reading the content tells it apart.
    let wasm = hooks.join("echo.wasm");
    let mtime = std::fs::metadata(&wasm).unwrap().modified().unwrap();
    std::fs::write(&wasm, version(1)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&wasm)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    place(&hooks, "other.toml", echo_toml(&receiver, "").as_bytes());
    place(&hooks, "other.wasm", &version(2));
    assert_eq!(
        hash(&engine, "other"),
        None,
        "no watcher: nothing moves by itself"
    );
    engine.reload().await.unwrap();
    let second = hash(&engine, "echo").unwrap();
    assert_eq!(second.0, HookState::Live);
    assert_ne!(second.1, first.1, "the changed content was loaded");
    assert_eq!(hash(&engine, "other").map(|h| h.0), Some(HookState::Live));

    std::fs::write(&wasm, b"not wasm").unwrap();
    engine.reload().await.unwrap();
    let statuses = engine.hooks();
    let echo = statuses.iter().find(|h| h.name == "echo").unwrap();
    assert_eq!(echo.state, HookState::Live);
    assert_eq!(
        echo.hash.as_deref(),
        Some(second.1.as_str()),
        "version 1 keeps serving"
    );
    assert!(echo.last_error.is_some(), "the broken file is reported");

    // A folder gone (unmounted, moved) unloads nothing.
    let moved = state.path().join("moved");
    std::fs::rename(&hooks, &moved).unwrap();
    let gone = engine.reload().await;
    std::fs::rename(&moved, &hooks).unwrap();
    assert!(
        matches!(gone, Err(wasmhooks::Error::HooksDir { .. })),
        "{gone:?}"
    );
    let live = engine
        .hooks()
        .iter()
        .filter(|h| h.state == HookState::Live)
        .count();
    assert_eq!(live, 2, "both hooks keep serving");
}
