//! The Xen Orchestra plugin (`integrations/xo-server-wasmhooks`) passes its
//! own tests, `node --test`, against this build of `wasmhooks serve` and the
//! example hooks: a stand-in xo-server, a real engine, a real receiver.

use crate::{root, wasm};
use std::process::Command;

#[test]
fn the_xo_plugin_passes_its_node_tests() {
    let plugin = root().join("integrations/xo-server-wasmhooks");
    assert!(
        plugin
            .join("node_modules/@xen-orchestra/emit-async")
            .is_dir(),
        "the XO plugin's npm packages are missing: run scripts/install-guest-toolchains.sh"
    );
    let guests = wasm("deny").parent().unwrap().to_owned();
    // Its output goes straight to ours, as it runs; each of its tests is
    // bounded, so a hang is a failure that says where.
    let status = Command::new("node")
        .args([
            "--test",
            "--test-timeout=300000",
            "--test-force-exit",
            "--test-concurrency=1",
            "test/plugin.test.js",
        ])
        .current_dir(&plugin)
        .env("WASMHOOKS_BIN", env!("CARGO_BIN_EXE_wasmhooks"))
        .env("WASMHOOKS_GUESTS", &guests)
        .status()
        .expect("running node (Node 20 or later is needed)");
    assert!(
        status.success(),
        "the XO plugin's tests failed ({status}); their output is above"
    );
}
