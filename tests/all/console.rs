//! The operator console (`GET /` of `wasmhooks serve`), end to end in
//! headless Chromium: tests/console/console.test.mjs, `node --test`, against
//! this build, the example hooks and a real receiver. Each test leaves a
//! screenshot in target/console-screenshots/.

use crate::{node_test, root};

#[test]
fn the_console_passes_its_browser_tests() {
    let tests = root().join("tests/console");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    for (missing, what) in [
        (
            !tests.join("node_modules/playwright-core").is_dir(),
            "playwright-core (npm)",
        ),
        (!std::path::Path::new(&chromium).exists(), "chromium"),
    ] {
        assert!(
            !missing,
            "{what} is missing: run scripts/install-guest-toolchains.sh"
        );
    }
    let screenshots = root().join("target/console-screenshots");
    // For the hooks bucket's test.
    let nats = crate::nats_server::NatsServer::start();
    let status = node_test(
        &tests,
        &["console.test.mjs"],
        &[
            ("SCREENSHOTS", screenshots.as_os_str()),
            ("CHROMIUM", chromium.as_ref()),
            ("NATS_URL", nats.url.as_ref()),
        ],
    );
    assert!(
        status.success(),
        "the console's browser tests failed ({status}); their output is above, \
         their screenshots in {}",
        screenshots.display()
    );
}
