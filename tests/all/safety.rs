//! Deliveries that can't be turned against us: the SSRF guard, and
//! Standard Webhooks signatures checked by an independent implementation.

use crate::{Receiver, fixture, install, test_config};
use base64::Engine as _;
use wasmhooks::{DeliveryState, Engine, HookState};

fn echo_to(url: &str, extra: &str) -> String {
    format!("{extra}\n[settings]\nmode = \"echo\"\nurl = \"{url}\"\n")
}

#[tokio::test]
async fn every_non_public_target_is_refused_unless_allow_listed() {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let refused = [
        ("loopback", "127.0.0.1".to_owned()),
        ("localhost", "localhost".to_owned()), // refused after DNS resolution
        ("private10", "10.0.0.1".to_owned()),
        ("private172", "172.16.0.1".to_owned()),
        ("private192", "192.168.0.1".to_owned()),
        ("metadata", "169.254.169.254".to_owned()),
        ("cgnat", "100.64.0.1".to_owned()),
        ("multicast", "224.0.0.1".to_owned()),
        ("unspecified", "0.0.0.0".to_owned()),
        ("reserved", "240.0.0.1".to_owned()),
        ("v6loopback", "[::1]".to_owned()),
        ("v6ula", "[fd00::1]".to_owned()),
        ("v6linklocal", "[fe80::1]".to_owned()),
        ("v4mapped", "[::ffff:127.0.0.1]".to_owned()),
        ("sixtofour", "[2002:7f00:1::]".to_owned()),
        ("nat64", "[64:ff9b::a9fe:a9fe]".to_owned()),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, host) in &refused {
        let url = format!("http://{host}:{port}/{name}");
        install(dir.path(), name, "misbehave", Some(&echo_to(&url, "")));
    }
    // Allowed explicitly: by address, and by CIDR for a name resolved by DNS.
    let allowed = [
        ("allowed_ip", "127.0.0.1", "allow_hosts = [\"127.0.0.1\"]"),
        (
            "allowed_cidr",
            "localhost",
            "allow_hosts = [\"127.0.0.0/8\"]",
        ),
        ("allowed_name", "localhost", "allow_hosts = [\"localhost\"]"),
    ];
    for (name, host, allow) in allowed {
        let url = format!("http://{host}:{port}/{name}");
        install(dir.path(), name, "misbehave", Some(&echo_to(&url, allow)));
    }
    let mut config = test_config(dir.path());
    config.delivery.allow_hosts.clear(); // the default: nothing non-public
    let engine = Engine::new(config).await.unwrap();
    assert!(engine.hooks().iter().all(|h| h.state == HookState::Live));

    engine.post(fixture("vm.start.post")).await.unwrap();
    engine.drain().await;

    let mut paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(paths, ["/allowed_cidr", "/allowed_ip", "/allowed_name"]);
    let dead = engine.deliveries(DeliveryState::Dead, 100).await.unwrap();
    assert_eq!(dead.len(), refused.len());
    for (name, host) in &refused {
        let d = dead.iter().find(|d| d.hook == *name).unwrap();
        let error = d.last_error.as_deref().unwrap();
        assert_eq!(d.attempts, 1, "{name}: a refusal is not retried");
        assert!(
            error.starts_with(&format!("hook {name}: refused to connect to ")),
            "{error}"
        );
        let bare = host.trim_matches(|c| c == '[' || c == ']');
        assert!(error.contains(bare), "{name}: names the address: {error}");
        assert!(error.contains("allow_hosts"), "says what to do: {error}");
    }
}

const HMAC_NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const HMAC_OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

#[tokio::test]
async fn deliveries_are_signed_per_standard_webhooks_with_every_secret() {
    let receiver = Receiver::start().await;
    let seed = [7u8; 32];
    let ed_key = format!(
        "whsk_{}",
        base64::engine::general_purpose::STANDARD.encode(seed)
    );
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("secret = [\"{HMAC_NEW}\", \"{HMAC_OLD}\", \"{ed_key}\"]");
    install(
        dir.path(),
        "signed",
        "misbehave",
        Some(&echo_to(&receiver.url("/signed"), &extra)),
    );
    let engine = Engine::new(test_config(dir.path())).await.unwrap();
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    let r = &got[0];

    // HMAC (v1), with the new and the old secret alike: a rotation.
    for secret in [HMAC_NEW, HMAC_OLD] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .unwrap_or_else(|e| panic!("{secret:.10}…: {e:?}"));
    }
    let wrong = standardwebhooks::Webhook::new("whsec_aW52YWxpZC1zZWNyZXQtZm9yLXRlc3Rz").unwrap();
    assert!(wrong.verify(&r.body, &r.headers).is_err());

    // ed25519 (v1a), over the same content.
    let signature = r.header("webhook-signature");
    let v1a = signature
        .split(' ')
        .find_map(|s| s.strip_prefix("v1a,"))
        .expect("a v1a signature");
    let bytes: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(v1a)
        .unwrap()
        .try_into()
        .unwrap();
    let content = format!(
        "{}.{}.{}",
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        String::from_utf8_lossy(&r.body)
    );
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    public
        .verify_strict(
            content.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .expect("v1a verifies with the public key");
    assert_eq!(signature.split(' ').count(), 3, "one signature per secret");
}

/// `file:PATH` (relative to the hooks folder) and `env:NAME` keep the secret
/// itself out of `NAME.toml`; a reference that cannot be read is a
/// settings error naming it.
#[tokio::test]
async fn a_secret_can_live_in_a_file_or_the_environment() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("signed.secret"), format!("{HMAC_NEW}\n")).unwrap();
    let extra = "secret = \"file:signed.secret\"";
    install(
        dir.path(),
        "signed",
        "misbehave",
        Some(&echo_to(&receiver.url("/signed"), extra)),
    );
    for (name, secret) in [
        ("nofile", "file:missing.secret"),
        ("noenv", "env:WASMHOOKS_TEST_NEVER_SET"),
    ] {
        let extra = format!("secret = \"{secret}\"");
        install(
            dir.path(),
            name,
            "misbehave",
            Some(&echo_to(&receiver.url("/x"), &extra)),
        );
    }
    let engine = Engine::new(test_config(dir.path())).await.unwrap();
    engine.post(fixture("vm.start.post")).await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].path, "/signed",
        "only the hook whose secret was read is live"
    );
    standardwebhooks::Webhook::new(HMAC_NEW)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .expect("signed with the secret from the file");

    for (name, says) in [
        ("nofile", "missing.secret"),
        ("noenv", "WASMHOOKS_TEST_NEVER_SET"),
    ] {
        let status = engine.hooks().into_iter().find(|h| h.name == name).unwrap();
        let error = status.last_error.expect("fails to load");
        assert_eq!(error.stage, wasmhooks::Stage::Settings, "{error:?}");
        assert!(error.file.ends_with(format!("{name}.toml")), "{error:?}");
        assert!(error.reason.contains(says), "{error:?}");
    }
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Broken TOML quoting a secret, and a secret too short to be one.
    install(
        dir.path(),
        "broken",
        "misbehave",
        Some("secret = \"whsec_TOPSECRETVALUE\nmode = 1\n"),
    );
    install(
        dir.path(),
        "short",
        "misbehave",
        Some("secret = \"whsec_c2hvcnRzZWNyZXQ=\"\n[settings]\nmode = \"deny\"\n"),
    );
    let engine = Engine::new(test_config(dir.path())).await.unwrap();
    for hook in engine.hooks() {
        let error = hook.last_error.expect("fails to load");
        let text = format!("{error} {error:?}");
        assert!(!text.contains("TOPSECRETVALUE"), "{text}");
        assert!(!text.contains("c2hvcnRzZWNyZXQ"), "{text}");
        assert_eq!(error.stage, wasmhooks::Stage::Settings);
    }
}
