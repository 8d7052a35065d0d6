//! The Xen Orchestra plugin (`integrations/xo-server-wasmhooks`) passes its
//! own tests, `node --test`, against this build of `wasmhooks serve` and the
//! example hooks: a stand-in xo-server, a real engine, a real receiver.

use crate::{node_test, root};

#[test]
fn the_xo_plugin_passes_its_node_tests() {
    let plugin = root().join("integrations/xo-server-wasmhooks");
    assert!(
        plugin
            .join("node_modules/@xen-orchestra/emit-async")
            .is_dir(),
        "the XO plugin's npm packages are missing: run scripts/install-guest-toolchains.sh"
    );
    let status = node_test(&plugin, "test/plugin.test.js", &[]);
    assert!(
        status.success(),
        "the XO plugin's tests failed ({status}); their output is above"
    );
}
