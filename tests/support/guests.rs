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

/// The version mark compiled into `misbehave` (see its source).
const VERSION_MARK: &[u8] = b"wasmhooks-ver-00";

/// The mark version `k` of `misbehave` carries: `wasmhooks-ver-KK`.
pub fn version_mark(k: u32) -> String {
    format!("wasmhooks-ver-{k:02}")
}

/// Version `k` (0..=99) of the `misbehave` hook: the same component with its
/// version mark patched, so it has its own content hash and says which
/// version handled an event.
pub fn misbehave_version(k: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(wasm("misbehave")).unwrap();
    let at: Vec<usize> = bytes
        .windows(VERSION_MARK.len())
        .enumerate()
        .filter(|(_, w)| *w == VERSION_MARK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "the version mark appears once in misbehave.wasm"
    );
    bytes[at[0]..at[0] + VERSION_MARK.len()].copy_from_slice(version_mark(k).as_bytes());
    bytes
}

/// Writes a file the recommended way: a temporary name, then a rename.
pub fn place(dir: &std::path::Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// The folder `scripts/install-guest-toolchains.sh` installs into.
pub fn toolchains() -> PathBuf {
    std::env::var_os("WASMHOOKS_TOOLCHAINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".toolchains"))
}

/// Fails, naming the install script, unless every tool is installed.
pub fn require_tools(what: &str, tools: &[&str]) {
    let bin = toolchains().join("bin");
    for tool in tools {
        assert!(
            bin.join(tool).exists(),
            "`{tool}` (needed to build {what}) is not in {}: \
             run scripts/install-guest-toolchains.sh first",
            bin.display()
        );
    }
}

/// `PATH` with the guest toolchains first.
pub fn toolchain_path() -> std::ffi::OsString {
    std::env::join_paths(
        std::iter::once(toolchains().join("bin")).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .unwrap()
}

/// The example hook of `guest-examples/LANG/`, built from source by its
/// `build.sh` with the project's guest toolchains, once per process. Fails,
/// naming the install script, when a tool it needs is missing.
pub fn example(lang: &str, tools: &[&str]) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(l, _)| l == lang) {
        return path.clone();
    }
    require_tools(&format!("guest-examples/{lang}"), tools);
    let out_dir = root().join("target/guests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{lang}.wasm"));
    let output = Command::new(root().join(format!("guest-examples/{lang}/build.sh")))
        .arg(&out)
        .env("PATH", toolchain_path())
        .output()
        .expect("running the example's build.sh");
    assert!(
        output.status.success() && out.is_file(),
        "building guest-examples/{lang} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    built.push((lang.to_owned(), out.clone()));
    out
}
