//! The Xen Orchestra plugin (`integrations/xo-server-wasmhooks`) passes its
//! own tests, `node --test`, against this build of `wasmhooks serve` and the
//! example hooks: a stand-in xo-server that loads the plugin as xo-server
//! does and serves XO's JSON-RPC and REST entry points, a real engine, a
//! real receiver.

use crate::{node_test, root};

#[test]
fn the_xo_plugin_passes_its_node_tests() {
    let plugin = root().join("integrations/xo-server-wasmhooks");
    assert!(
        plugin.join("node_modules/express").is_dir(),
        "the XO plugin's npm packages are missing: run scripts/install-guest-toolchains.sh"
    );
    let status = node_test(
        &plugin,
        &[
            "test/load.test.js",
            "test/plugin.test.js",
            "test/rest.test.js",
            "test/coverage.test.js",
        ],
        &[],
    );
    assert!(
        status.success(),
        "the XO plugin's tests failed ({status}); their output is above"
    );
}
