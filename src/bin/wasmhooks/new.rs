//! `wasmhooks new`: a hook folder in one of the supported languages that
//! builds with one command (`./build.sh`) and passes `wasmhooks run` on the
//! sample event it comes with. Each one is the language's example from
//! `guest-examples/`, renamed, with the WIT beside it.

use crate::cli::NewArgs;
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

const WIT: &str = include_str!("../../../wit/hook.wit");

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
    // The example's source, and its build.sh writing NAME.wasm instead of
    // the example's own output.
    macro_rules! example {
        ($lang:literal, $source:literal, $out:literal) => {
            vec![
                (
                    $source,
                    include_str!(concat!("../../../guest-examples/", $lang, "/", $source))
                        .to_owned(),
                ),
                (
                    "build.sh",
                    include_str!(concat!("../../../guest-examples/", $lang, "/build.sh"))
                        .replace($out, &wasm),
                ),
            ]
        };
    }
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
                include_str!("../../../rust-toolchain.toml").to_owned(),
            ),
            (
                "src/lib.rs",
                include_str!("../../../templates/new/rust/lib.rs").to_owned(),
            ),
            (
                "build.sh",
                include_str!("../../../templates/new/rust/build.sh")
                    .replace("NAME.wasm", &wasm)
                    .replace("CRATE", &name.replace('-', "_")),
            ),
        ],
        Lang::Python => example!("python", "app.py", "slack.wasm"),
        Lang::Js => example!("js", "deny.js", "deny.wasm"),
        Lang::C => {
            let mut files = example!("c", "forward.c", "forward.wasm");
            files.push((".gitignore", "gen/\n".to_owned()));
            files
        }
        Lang::Go => example!("go", "export_wit_world/slack.go", "slack.wasm"),
        Lang::Zig => example!("zig", "filter.zig", "filter.wasm"),
        Lang::Assemblyscript => example!("assemblyscript", "deny.ts", "deny.wasm"),
    };
    // Each kind of example with its sample event and the test cases that
    // hold for it as it comes (`templates/new/tests/`).
    let (settings, event, tests, what) = match lang {
        Lang::Rust => (
            "[settings]\nurl = \"https://ci.example/hooks/xo\"\n".to_owned(),
            include_str!("../../../tests/fixtures/xo/vm.start.post.json"),
            include_str!("../../../templates/new/tests/forward.test.toml"),
            "forwards each vm.* post event's payload to `url`",
        ),
        // The C example forwards every method unless told which.
        Lang::C => (
            "[settings]\nurl = \"https://ci.example/hooks/xo\"\nmethods = [\"vm.*\"]\n".to_owned(),
            include_str!("../../../tests/fixtures/xo/vm.start.post.json"),
            include_str!("../../../templates/new/tests/forward.test.toml"),
            "forwards each vm.* post event's payload to `url`",
        ),
        Lang::Python | Lang::Go => (
            "[settings]\nurl = \"https://hooks.slack.com/services/T000/B000/XXXX\"\n".to_owned(),
            include_str!("../../../tests/fixtures/xo/vm.start.post.json"),
            include_str!("../../../templates/new/tests/slack.test.toml"),
            "sends one Slack message per vm.* call",
        ),
        Lang::Js => (
            "[settings]\nprotected = [\"0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d\"]\n".to_owned(),
            include_str!("../../../tests/fixtures/xo/vm.delete.pre.json"),
            include_str!("../../../templates/new/tests/deny.test.toml"),
            "vetoes vm.delete and vm.stop on protected VMs",
        ),
        Lang::Zig => (
            include_str!("../../../guest-examples/zig/filter.toml").to_owned(),
            include_str!("../../../tests/fixtures/xo/vm.migrate.post.error.json"),
            include_str!("../../../templates/new/tests/filter.test.toml"),
            "a WASI command hook: pages post events that carry an `error`",
        ),
        Lang::Assemblyscript => (
            include_str!("../../../guest-examples/assemblyscript/deny.toml").to_owned(),
            include_str!("../../../tests/fixtures/xo/vm.delete.pre.json"),
            include_str!("../../../templates/new/tests/deny.test.toml"),
            "a WASI command hook: vetoes vm.delete and vm.stop on protected VMs",
        ),
    };
    if !matches!(lang, Lang::Zig | Lang::Assemblyscript) {
        files.push(("wit/hook.wit", WIT.to_owned()));
    }
    files.push(("event.json", event.to_owned()));
    let toml = format!("{name}.toml");
    files.push((&toml, settings));
    let test = format!("{name}.test.toml");
    files.push((&test, tests.to_owned()));
    let readme = format!(
        "# {name}\n\nA wasmhooks hook in {lang:?} that {what}. Edit it to taste.\n\n\
         Build it (the toolchain comes from the wasmhooks repository's \
         `scripts/install-guest-toolchains.sh`; put its `.toolchains/bin` on PATH), \
         then try it on the sample event, and run its test cases ({test}: each \
         an event and what the hook must do with it; add yours):\n\n\
         ```sh\n./build.sh\nwasmhooks run {wasm} --event event.json\nwasmhooks test\n```\n\n\
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
    // The next steps, where an author looks first.
    let next = format!(
        "\n# Then: `wasmhooks run {wasm} --event event.json` shows what it does with the\n\
         # sample event, and `wasmhooks test` runs the cases of {test}.\n"
    );
    let mut build = std::fs::OpenOptions::new()
        .append(true)
        .open(&script)
        .with_context(|| format!("writing {}", script.display()))?;
    std::io::Write::write_all(&mut build, next.as_bytes())
        .with_context(|| format!("writing {}", script.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", script.display()))?;
    Ok(dir)
}

/// `wasmhooks new`: creates the folder and says how to build it.
pub(crate) fn command(args: NewArgs) -> Result<()> {
    let dir = new(args.lang, &args.name, &args.dir)?;
    println!(
        "created {dir}\nnext: cd {dir} && ./build.sh && wasmhooks run {name}.wasm --event event.json && wasmhooks test",
        dir = dir.display(),
        name = args.name
    );
    Ok(())
}
