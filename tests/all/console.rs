//! The operator console (`GET /` of `wasmhooks serve`), end to end in
//! headless Chromium: tests/console/console.test.mjs, `node --test`, against
//! this build, the example hooks and a real receiver. Each test leaves a
//! screenshot in target/console-screenshots/.

use crate::{root, wasm};
use std::process::Command;

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
    let guests = wasm("forward").parent().unwrap().to_owned();
    let screenshots = root().join("target/console-screenshots");
    // Its output goes straight to ours as it runs; every wait in it is
    // bounded, so a hang is a failure that says where.
    let status = Command::new("node")
        .args([
            "--test",
            "--test-timeout=300000",
            "--test-force-exit",
            "--test-concurrency=1",
            "console.test.mjs",
        ])
        .current_dir(&tests)
        .env("WASMHOOKS_BIN", env!("CARGO_BIN_EXE_wasmhooks"))
        .env("WASMHOOKS_GUESTS", &guests)
        .env("SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .status()
        .expect("running node (Node 20 or later is needed)");
    assert!(
        status.success(),
        "the console's browser tests failed ({status}); their output is above, \
         their screenshots in {}",
        screenshots.display()
    );
}
