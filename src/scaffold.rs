//! `wasmhooks new`: a hook folder in one of the supported languages that
//! builds with one command (`./build.sh`) and passes `wasmhooks run` on the
//! sample event it comes with. Each one is the language's example from
//! `guest-examples/`, renamed, with the WIT beside it.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The languages `wasmhooks new` knows.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
    Go,
    Zig,
    Assemblyscript,
}

const WIT: &str = include_str!("../wit/hook.wit");

/// Creates `parent/name/` for `lang`; returns the folder.
pub fn new(lang: Lang, name: &str, parent: &Path) -> Result<PathBuf> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "hook name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter (it becomes NAME.wasm)"
        );
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists; pick another name or remove it",
            dir.display()
        );
    }
    let wasm = format!("{name}.wasm");
    let build = |script: &str, example_out: &str| script.replace(example_out, &wasm);
    let mut files: Vec<(&str, String)> = match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                 [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nwit-bindgen = \"0.63\"\nserde_json = \"1\"\n\n\
                 [profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\n\n\
                 # Not part of any enclosing workspace.\n[workspace]\n"
                ),
            ),
            (
                "rust-toolchain.toml",
                include_str!("../rust-toolchain.toml").to_owned(),
            ),
            (
                "src/lib.rs",
                include_str!("scaffold/rust_lib.rs").to_owned(),
            ),
            (
                "build.sh",
                include_str!("scaffold/rust_build.sh")
                    .replace("NAME.wasm", &wasm)
                    .replace("CRATE", &name.replace('-', "_")),
            ),
        ],
        Lang::Python => vec![
            (
                "app.py",
                include_str!("../guest-examples/python/app.py").to_owned(),
            ),
            (
                "build.sh",
                build(
                    include_str!("../guest-examples/python/build.sh"),
                    "slack.wasm",
                ),
            ),
        ],
        Lang::Js => vec![
            (
                "deny.js",
                include_str!("../guest-examples/js/deny.js").to_owned(),
            ),
            (
                "build.sh",
                build(include_str!("../guest-examples/js/build.sh"), "deny.wasm"),
            ),
        ],
        Lang::C => vec![
            (
                "forward.c",
                include_str!("../guest-examples/c/forward.c").to_owned(),
            ),
            (
                "build.sh",
                build(include_str!("../guest-examples/c/build.sh"), "forward.wasm"),
            ),
            (".gitignore", "gen/\n".to_owned()),
        ],
        Lang::Go => vec![
            (
                "export_wit_world/slack.go",
                include_str!("../guest-examples/go/export_wit_world/slack.go").to_owned(),
            ),
            (
                "build.sh",
                build(include_str!("../guest-examples/go/build.sh"), "slack.wasm"),
            ),
        ],
        Lang::Zig => vec![
            (
                "filter.zig",
                include_str!("../guest-examples/zig/filter.zig").to_owned(),
            ),
            (
                "build.sh",
                build(
                    include_str!("../guest-examples/zig/build.sh"),
                    "filter.wasm",
                ),
            ),
        ],
        Lang::Assemblyscript => vec![
            (
                "deny.ts",
                include_str!("../guest-examples/assemblyscript/deny.ts").to_owned(),
            ),
            (
                "build.sh",
                build(
                    include_str!("../guest-examples/assemblyscript/build.sh"),
                    "deny.wasm",
                ),
            ),
        ],
    };
    let (settings, event, what) = match lang {
        Lang::Rust | Lang::C => (
            "[settings]\nurl = \"https://ci.example/hooks/xo\"\n".to_owned(),
            include_str!("../tests/fixtures/xo/vm.start.post.json"),
            "forwards each vm.* post event's payload to `url`",
        ),
        Lang::Python | Lang::Go => (
            "[settings]\nurl = \"https://hooks.slack.com/services/T000/B000/XXXX\"\n".to_owned(),
            include_str!("../tests/fixtures/xo/vm.start.post.json"),
            "sends one Slack message per vm.* call",
        ),
        Lang::Js => (
            "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n".to_owned(),
            include_str!("../tests/fixtures/xo/vm.delete.pre.json"),
            "vetoes vm.delete and vm.stop on protected VMs",
        ),
        Lang::Zig => (
            include_str!("../guest-examples/zig/filter.toml").to_owned(),
            include_str!("../tests/fixtures/xo/vm.migrate.post.error.json"),
            "a WASI command hook: pages post events that carry an `error`",
        ),
        Lang::Assemblyscript => (
            include_str!("../guest-examples/assemblyscript/deny.toml").to_owned(),
            include_str!("../tests/fixtures/xo/vm.delete.pre.json"),
            "a WASI command hook: vetoes vm.delete and vm.stop on protected VMs",
        ),
    };
    if !matches!(lang, Lang::Zig | Lang::Assemblyscript) {
        files.push(("wit/hook.wit", WIT.to_owned()));
    }
    files.push(("event.json", event.to_owned()));
    let toml = format!("{name}.toml");
    files.push((&toml, settings));
    let readme = format!(
        "# {name}\n\nA wasmhooks hook in {lang:?} that {what}. Edit it to taste.\n\n\
         Build it (the toolchain comes from the wasmhooks repository's \
         `scripts/install-guest-toolchains.sh`; put its `.toolchains/bin` on PATH), \
         then try it on the sample event:\n\n\
         ```sh\n./build.sh\nwasmhooks run {wasm} --event event.json\n```\n\n\
         Deploy it by copying `{wasm}` and `{toml}` into the engine's hooks folder \
         (write to a temporary name, then rename). The guide: docs/writing-hooks.md \
         in the wasmhooks repository.\n"
    );
    files.push(("README.md", readme));

    for (path, content) in &files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the folder"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    let script = dir.join("build.sh");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", script.display()))?;
    Ok(dir)
}
