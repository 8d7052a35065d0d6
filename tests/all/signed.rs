//! Signed hooks (`[trust]`): a hook loads only with a signature of its
//! module by a trusted key; a missing, foreign or stale signature is
//! refused with the reason, and the last good version keeps serving.

use crate::guests::{misbehave_version as version, place, version_mark as mark};
use crate::reload::{echo_toml, event, wait_hooks};
use crate::{Receiver, test_config};
use std::process::Command;
use wasmhooks::config::{SettingsError, TrustConfig};
use wasmhooks::trust::{SecretKey, TrustError};
use wasmhooks::{Engine, Error, HookState, HookStatus, LoadError, Stage};

fn status<'a>(all: &'a [HookStatus], name: &str) -> &'a HookStatus {
    all.iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("no status for {name} in {all:#?}"))
}

/// Why `name` last failed to load, which must be its signature.
fn refusal(all: &[HookStatus], name: &str) -> LoadError {
    let error = status(all, name)
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("{name} was refused"));
    assert_eq!(error.stage, Stage::Signature, "{error}");
    assert_eq!(error.file.file_name().unwrap(), &*format!("{name}.sig"));
    error
}

#[tokio::test]
async fn only_a_module_signed_by_a_trusted_key_loads_and_a_stale_signature_keeps_the_last_good_version()
 {
    let receiver = Receiver::start().await;
    let (alice, mallory) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sign = |name: &str, key: &SecretKey, module: &[u8]| {
        place(
            d,
            &format!("{name}.sig"),
            key.sign(module).to_string().as_bytes(),
        );
    };
    let hook = |name: &str, k: u32| {
        place(
            d,
            &format!("{name}.toml"),
            echo_toml(&receiver, name).as_bytes(),
        );
        place(d, &format!("{name}.wasm"), &version(k));
    };
    hook("signed", 1);
    sign("signed", &alice, &version(1));
    hook("unsigned", 2);
    hook("foreign", 3);
    sign("foreign", &mallory, &version(3));
    hook("stale", 4);
    sign("stale", &alice, &version(5));
    hook("garbled", 6);
    place(d, "garbled.sig", b"ed25519 looks-like-one\n");

    // One key inline, the other from a file, as an operator would write them.
    let public = d.join(".keys/alice.pub");
    std::fs::create_dir_all(public.parent().unwrap()).unwrap();
    std::fs::write(&public, format!("{}\n", alice.public())).unwrap();
    let other = SecretKey::generate().unwrap();
    let mut config = test_config(d);
    // A refusal of files just written waits until they settle (a deploy
    // may be writing the other); the rescan then reads them again.
    config.settle_ms = 5_000;
    config.rescan_ms = 100;
    config.trust = Some(TrustConfig {
        keys: vec![
            other.public().to_string(),
            format!("file:{}", public.display()),
        ],
    });
    let engine = Engine::new(config).await.unwrap();

    let all = engine.hooks();
    let signed = status(&all, "signed");
    assert_eq!(signed.state, HookState::Live, "{signed:#?}");
    assert_eq!(signed.signed_by, Some(alice.public().id()));
    for (name, why) in [
        ("unsigned", TrustError::Unsigned),
        (
            "foreign",
            TrustError::NotTrusted {
                key_id: mallory.public().id(),
            },
        ),
        (
            "stale",
            TrustError::Mismatch {
                key_id: alice.public().id(),
            },
        ),
    ] {
        assert_eq!(status(&all, name).state, HookState::Failed);
        assert_eq!(refusal(&all, name).reason, why.to_string(), "{name}");
    }
    assert!(
        refusal(&all, "garbled")
            .reason
            .starts_with("not a signature")
    );
    engine.post(event("first")).await.unwrap();
    receiver
        .wait_until("a delivery from the signed hook only", |got| {
            got.iter().any(|r| r.header("x-version") == mark(1))
        })
        .await;

    // A new module over a live one, its signature not yet renewed: refused,
    // and version 1 still serves.
    let served = signed.hash.clone();
    place(d, "signed.wasm", &version(7));
    let all = wait_hooks(&engine, "the new module refused", |all| {
        status(all, "signed").last_error.is_some()
    })
    .await;
    let stale = refusal(&all, "signed");
    assert_eq!(
        stale.reason,
        TrustError::Mismatch {
            key_id: alice.public().id()
        }
        .to_string()
    );
    assert_eq!(status(&all, "signed").state, HookState::Live);
    assert_eq!(status(&all, "signed").hash, served);
    engine.post(event("second")).await.unwrap();
    receiver
        .wait_until("version 1 still serving", |got| {
            got.iter()
                .filter(|r| r.header("x-version") == mark(1))
                .count()
                == 2
        })
        .await;

    // Its signature arrives: version 7 goes live; so does the hook that
    // had none, once it gets one.
    sign("signed", &alice, &version(7));
    sign("unsigned", &alice, &version(2));
    let all = wait_hooks(&engine, "both signed hooks live", |all| {
        ["signed", "unsigned"].iter().all(|n| {
            let s = status(all, n);
            s.state == HookState::Live && s.last_error.is_none() && s.hash != served
        })
    })
    .await;
    assert_eq!(
        status(&all, "unsigned").signed_by,
        Some(alice.public().id())
    );
    engine.post(event("third")).await.unwrap();
    receiver
        .wait_until("versions 7 and 2 serving", |got| {
            [7, 2]
                .iter()
                .all(|k| got.iter().any(|r| r.header("x-version") == mark(*k)))
        })
        .await;

    // Signed again by another trusted key: the same version, its new
    // signer shown.
    sign("unsigned", &other, &version(2));
    wait_hooks(&engine, "the new signer shown", |all| {
        status(all, "unsigned").signed_by == Some(other.public().id())
    })
    .await;

    // A deploy: the module, then its signature. The moment between them
    // is not a failure.
    let failures = status(&all, "signed").load_failures;
    let before = status(&all, "signed").hash.clone();
    place(d, "signed.wasm", &version(8));
    // Once a hook written after it is live, the engine has read the new
    // module beside its old signature.
    hook("marker", 9);
    sign("marker", &alice, &version(9));
    let all = wait_hooks(&engine, "the marker live", |all| {
        all.iter()
            .any(|h| h.name == "marker" && h.state == HookState::Live)
    })
    .await;
    let signed = status(&all, "signed");
    assert!(signed.last_error.is_none(), "{signed:#?}");
    assert_eq!(signed.hash, before);
    sign("signed", &alice, &version(8));
    let all = wait_hooks(&engine, "version 8 live", |all| {
        status(all, "signed").hash != before
    })
    .await;
    let signed = status(&all, "signed");
    assert!(signed.last_error.is_none(), "{signed:#?}");
    assert_eq!(signed.load_failures, failures, "{signed:#?}");
}

#[tokio::test]
async fn trust_without_a_usable_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (keys, field) in [
        (vec![], "trust.keys"),
        (vec!["ed25519 AAAA".to_owned()], "trust.keys[0]"),
        (
            vec![
                SecretKey::generate().unwrap().public().to_string(),
                "file:/nonexistent/alice.pub".to_owned(),
            ],
            "trust.keys[1]",
        ),
    ] {
        let mut config = test_config(dir.path());
        config.trust = Some(TrustConfig { keys });
        match Engine::new(config).await {
            Err(Error::Config(SettingsError::Field { field: f, .. })) => assert_eq!(f, field),
            Err(e) => panic!("{field}: {e}"),
            Ok(_) => panic!("{field}: the engine started"),
        }
    }
}

/// `wasmhooks keygen`, `sign` and `verify`, and `check` with `[trust]`.
#[test]
fn the_commands_sign_and_check_a_module() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let wasmhooks = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmhooks"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WASMHOOKS_") {
                command.env_remove(name);
            }
        }
        command.current_dir(d);
        command
    };
    let run = |args: &[&str]| {
        let out = wasmhooks().args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["keygen", "alice"]);
    assert_eq!(code, Some(0), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("alice.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the secret key is its owner's alone");
    let (code, text) = run(&["keygen", "alice"]);
    assert_eq!(
        code,
        Some(1),
        "a second keygen must not replace the key: {text}"
    );
    assert!(text.contains("alice.key"), "{text}");

    std::fs::create_dir(d.join("hooks")).unwrap();
    std::fs::write(d.join("hooks/gate.wasm"), version(1)).unwrap();
    std::fs::write(
        d.join("hooks/gate.toml"),
        "[settings]\nmode = \"echo\"\nurl = \"http://127.0.0.1:9/\"\n",
    )
    .unwrap();
    let (code, text) = run(&["sign", "--key", "alice.key", "hooks/gate.wasm"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&["verify", "--key", "alice.pub", "hooks/gate.wasm"]);
    assert_eq!(code, Some(0), "{text}");
    // Only a .wasm is signed: a signature of its settings would replace its own.
    let (code, text) = run(&["sign", "--key", "alice.key", "hooks/gate.toml"]);
    assert_eq!(code, Some(1), "{text}");
    std::fs::write(
        d.join("engine.toml"),
        format!(
            "[trust]\nkeys = [\"file:{}\"]\n",
            d.join("alice.pub").display()
        ),
    )
    .unwrap();
    let (code, text) = run(&["check", "--config", "engine.toml", "hooks"]);
    assert_eq!(code, Some(0), "{text}");
    // `--key` wins over a settings file from the environment.
    let out = wasmhooks()
        .args(["verify", "--key", "alice.pub", "hooks/gate.wasm"])
        .env("WASMHOOKS_CONFIG", d.join("engine.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // One byte changed after signing.
    std::fs::write(d.join("hooks/gate.wasm"), version(2)).unwrap();
    let (code, text) = run(&["verify", "--config", "engine.toml", "hooks/gate.wasm"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("REFUSED"), "{text}");
    let (code, text) = run(&["check", "--config", "engine.toml", "hooks"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("signature failed"), "{text}");
}

/// `POST /v1/simulate` on an engine with `[trust]` runs only a signed
/// upload: its signature comes in the `Wasmhooks-Signature` header.
#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_upload_needs_a_signature_on_a_trusting_engine() {
    let alice = SecretKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = d.join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    crate::install(&hooks, "deny", "deny", Some("[settings]\nprotected = []\n"));
    let module = std::fs::read(hooks.join("deny.wasm")).unwrap();
    let signature = alice.sign(&module).to_string();
    std::fs::write(hooks.join("deny.sig"), &signature).unwrap();
    std::fs::write(
        d.join("engine.toml"),
        format!(
            "[archive]\ndays = 1\n[trust]\nkeys = [\"{}\"]\n",
            alice.public()
        ),
    )
    .unwrap();
    let serve = crate::Serve::start(&hooks, &d.join(".state"), &d.join("engine.toml"));
    let url = format!("http://{}/v1/simulate?as=deny&hours=1", serve.addr);
    let client = reqwest::Client::new();
    let unsigned = client.post(&url).body(module.clone()).send().await.unwrap();
    assert_eq!(unsigned.status(), 400);
    let error = unsigned.json::<serde_json::Value>().await.unwrap()["error"].to_string();
    assert!(error.contains("signature failed"), "{error}");
    let signed = client
        .post(&url)
        .header("wasmhooks-signature", &signature)
        .body(module)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200, "{}", signed.text().await.unwrap());
}
