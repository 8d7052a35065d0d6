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
    let config = wasmhooks::Config {
        watch: false,
        ..crate::test_config(&missing)
    };
    match wasmhooks::Engine::new(config).await {
        Err(wasmhooks::Error::HooksDir { path, .. }) => assert_eq!(path, missing),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a missing folder must fail"),
    }
}
