//! Builds the guest hooks from source, once per process. Shared by the
//! integration tests and the benchmarks.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a guest built from source: an example hook from
/// `guest-examples/rust` or a test hook from `tests/guests`. Both workspaces
/// are built once per process.
pub fn wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = root().join("target/wasm");
        for workspace in ["guest-examples/rust", "tests/guests"] {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--target-dir",
                ])
                .arg(&target)
                .current_dir(root().join(workspace))
                .status()
                .expect("running cargo to build the guests");
            assert!(
                status.success(),
                "building the guests in {workspace} failed; is the wasm32-wasip2 target installed? \
                 run `rustup toolchain install` in the repo"
            );
        }
        target.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
