//! Broken hook files are reported with file, stage and reason, and the
//! engine serves the other hooks.

use crate::{Receiver, engine, fixture, install};
use wasmhooks::{HookState, HookStatus, Stage};

fn status<'a>(all: &'a [HookStatus], name: &str) -> &'a HookStatus {
    all.iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

#[tokio::test]
async fn broken_files_are_reported_and_the_good_hook_serves() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    install(
        d,
        "good",
        "forward",
        Some(&format!(
            "[settings]\nurl = \"{}\"\n",
            receiver.url("/good")
        )),
    );
    std::fs::write(d.join("garbage.wasm"), b"this is not webassembly at all").unwrap();
    std::fs::write(d.join("core.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
    std::fs::write(
        d.join("wrongworld.wasm"),
        wat::parse_str("(component)").unwrap(),
    )
    .unwrap();
    install(
        d,
        "badtoml",
        "forward",
        Some("[settings]\nurl = \"http://x/\"\ncolour = \"blue\"\n[extra]\n"),
    );
    install(d, "unknownkey", "forward", Some("deadline = 5\n"));
    install(d, "toolong", "forward", Some("deadline_ms = 999999999\n"));
    install(
        d,
        "nourl",
        "forward",
        Some("[settings]\nmethods = [\"vm.*\"]\n"),
    );
    std::fs::write(d.join("notes.txt"), "ignored").unwrap();

    let engine = engine(d).await;
    let all = engine.hooks();
    let expect = |name: &str, stage: Stage, file: &str, says: &str| {
        let s = status(&all, name);
        assert_eq!(s.state, HookState::Failed, "{name}");
        let e = s
            .last_error
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has an error"));
        assert_eq!(e.stage, stage, "{name}: {e}");
        assert_eq!(e.file, d.join(file), "{name}: {e}");
        assert_eq!(e.hook, name);
        assert!(
            e.reason.contains(says),
            "{name}: {:?} should say {says:?}",
            e.reason
        );
    };
    expect("garbage", Stage::Compile, "garbage.wasm", "not WebAssembly");
    expect(
        "core",
        Stage::Compile,
        "core.wasm",
        "does not export `_start`",
    );
    expect("wrongworld", Stage::Link, "wrongworld.wasm", "setup");
    expect("badtoml", Stage::Settings, "badtoml.toml", "extra");
    expect("unknownkey", Stage::Settings, "unknownkey.toml", "deadline");
    expect("toolong", Stage::Settings, "toolong.toml", "deadline_ms");
    expect("nourl", Stage::Setup, "nourl.wasm", "url");
    assert_eq!(status(&all, "good").state, HookState::Live);
    assert_eq!(all.len(), 8, "notes.txt is not a hook");

    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].path, "/good");
}

#[tokio::test]
async fn without_watch_a_missing_hooks_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let config = wasmhooks::config::Config {
        watch: false,
        ..crate::test_config(&missing)
    };
    match wasmhooks::Engine::new(config).await {
        Err(wasmhooks::Error::HooksDir { path, .. }) => assert_eq!(path, missing),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a missing folder must fail"),
    }
}

/// A truncated core module (a WASI command hook cut short while copied) is
/// a compile error that says what happened. Before: wit-component panicked,
/// and the message was "compiler thread failed: task N panicked".
#[tokio::test]
async fn a_truncated_core_module_is_a_clear_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let module = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "_start")
               (local i32)
               (local.set 0 (i32.const 1))
               (drop (i32.add (local.get 0) (i32.const 2)))
               (drop (i32.mul (local.get 0) (i32.const 3)))))"#,
    )
    .unwrap();
    // Cut inside the code section, after the exports.
    std::fs::write(dir.path().join("cut.wasm"), &module[..module.len() - 6]).unwrap();
    std::fs::write(
        dir.path().join("cut.toml"),
        "[subscription]\nmethods = [\"*\"]\nphases = [\"post\"]\n",
    )
    .unwrap();
    let engine = engine(dir.path()).await;
    let error = crate::load_error(&engine);
    assert_eq!(error.stage, Stage::Compile, "{error}");
    assert!(error.reason.contains("truncated"), "{error}");
    assert!(!error.reason.contains("panicked"), "{error}");
}

/// Files in the hooks folder that are not regular files, or are huge.
/// Before: a FIFO wedged the engine (its blocking read ran on the async
/// runtime; `/healthz` stopped answering, `check` hung), and a symlink
/// `x.wasm` to a directory silently unloaded the hook `x`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_sockets_folders_and_huge_files_are_load_errors_and_nothing_wedges() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let forward = format!("[settings]\nurl = \"{}\"\n", receiver.url("/x"));
    install(d, "x", "forward", Some(&forward));
    let mut config = crate::test_config(d);
    config.settle_ms = 50;
    let engine = wasmhooks::Engine::new(config).await.unwrap();
    let base = crate::server::serve(engine.clone()).await;
    let mut changes = engine.hook_changes();

    // Made outside the folder, then moved in: each a single event.
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path();
    let mkfifo = |path: &std::path::Path| {
        let ok = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success(), "mkfifo {}", path.display());
    };
    mkfifo(&o.join("fifo.wasm"));
    std::fs::copy(crate::wasm("forward"), o.join("fifotoml.wasm")).unwrap();
    mkfifo(&o.join("fifotoml.toml"));
    let _socket = std::os::unix::net::UnixListener::bind(o.join("socket.wasm")).unwrap();
    let sparse = std::fs::File::create(o.join("huge.wasm")).unwrap();
    sparse.set_len(2 << 30).unwrap(); // 2 GiB, sparse
    std::fs::create_dir(o.join("folder")).unwrap();
    std::os::unix::fs::symlink(o.join("folder"), o.join("x.wasm")).unwrap();
    for name in [
        "fifotoml.toml",
        "fifo.wasm",
        "fifotoml.wasm",
        "socket.wasm",
        "huge.wasm",
    ] {
        std::fs::rename(o.join(name), d.join(name)).unwrap();
    }
    // The good hook `x` replaced by a symlink to a folder.
    std::fs::rename(o.join("x.wasm"), d.join("x.wasm")).unwrap();

    let expected = [
        ("fifo", "fifo.wasm", "a FIFO"),
        ("fifotoml", "fifotoml.toml", "a FIFO"),
        ("socket", "socket.wasm", "a socket"),
        ("huge", "huge.wasm", "more than the"),
        ("x", "x.wasm", "a directory"),
    ];
    let settled = async {
        loop {
            let hooks = engine.hooks();
            let failed = expected.iter().all(|(name, ..)| {
                hooks
                    .iter()
                    .any(|h| h.name == *name && h.last_error.is_some())
            });
            if failed {
                return hooks;
            }
            changes.changed().await.unwrap();
        }
    };
    let hooks = tokio::time::timeout(std::time::Duration::from_secs(30), settled)
        .await
        .expect("every bad file reported");
    for (name, file, says) in expected {
        let error = status(&hooks, name).last_error.clone().unwrap();
        assert_eq!(error.stage, Stage::Read, "{error}");
        assert!(error.file.ends_with(file), "{error}");
        assert!(error.reason.contains(says), "{name}: {error}");
    }
    assert_eq!(
        status(&hooks, "x").state,
        HookState::Live,
        "the last good x keeps serving"
    );
    // The engine still answers, and still delivers.
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    engine.post(fixture("vm.start.post")).await.unwrap();
    receiver.wait_for(1).await;

    // `wasmhooks check` finishes, reporting them.
    let check = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmhooks"))
        .arg("check")
        .arg(d)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), check)
        .await
        .expect("check finishes")
        .unwrap();
    assert!(!out.status.success(), "check fails: some hooks do not load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("a FIFO") && stdout.contains("a socket"),
        "{stdout}"
    );
}
