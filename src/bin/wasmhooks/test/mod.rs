//! `wasmhooks test`: a hook's test cases, each an event and what the hook
//! must do with it (`file.rs`), run as `serve` would run the hook but
//! sending nothing (the library's dry run), checked (`expect.rs`), and
//! reported as a test runner does, with JUnit XML for CI (`junit.rs`).

mod expect;
mod file;
mod junit;

use crate::cli::{TestArgs, load_config, load_hook_settings};
use anyhow::{Context, Result, bail};
use file::TestFile;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wasmhooks::Event;
use wasmhooks::config::HookConfig;

/// One case's result.
pub(crate) struct CaseResult {
    pub(crate) name: String,
    pub(crate) took: Duration,
    /// Why it failed; empty: it passed.
    pub(crate) differences: Vec<String>,
}

/// A path as the report shows it: without a leading `./`.
pub(crate) fn shown(path: &Path) -> &Path {
    path.strip_prefix(".").unwrap_or(path)
}

/// One test file's results.
pub(crate) struct FileResult {
    pub(crate) file: PathBuf,
    pub(crate) cases: Vec<CaseResult>,
    /// Why the file could not run (malformed, its hook or an event missing).
    pub(crate) error: Option<String>,
}

pub(crate) async fn test(args: TestArgs) -> Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let paths = match args.paths.is_empty() {
        true => vec![PathBuf::from(".")],
        false => args.paths.clone(),
    };
    let files = test_files(&paths)?;
    let files: Vec<PathBuf> = files.iter().map(|f| shown(f).to_owned()).collect();
    let mut results = Vec::new();
    for file in files {
        // A broken test file (or a missing hook) is reported, and the
        // other files still run.
        let result = run_file(&config, &file)
            .await
            .unwrap_or_else(|e| FileResult {
                file: file.clone(),
                cases: Vec::new(),
                error: Some(format!("{e:#}")),
            });
        print(&result);
        results.push(result);
    }
    let cases: Vec<&CaseResult> = results.iter().flat_map(|r| &r.cases).collect();
    let failed = cases.iter().filter(|c| !c.differences.is_empty()).count();
    let broken = results.iter().filter(|r| r.error.is_some()).count();
    println!(
        "{} in {}: {} passed, {failed} failed{}",
        count(cases.len(), "case"),
        count(results.len(), "file"),
        cases.len() - failed,
        match broken {
            0 => String::new(),
            n => format!("; {} could not run", count(n, "file")),
        }
    );
    if let Some(path) = &args.junit {
        junit::write(path, &results)?;
    }
    // 1: a case failed; 2: a test file could not run.
    Ok(match (broken, failed) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::FAILURE,
        _ => ExitCode::from(2),
    })
}

/// `n` things, in English.
fn count(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

/// The test files named: files as they are; in a folder, each
/// `NAME.test.toml` and each `.toml` of a `NAME.tests/` folder.
fn test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_file() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        if is_tests_folder(path) {
            found = tomls_in(path)?;
        } else {
            for entry in read_dir(path)? {
                let name = entry.file_name().unwrap_or_default().to_string_lossy();
                if entry.is_file() && name.ends_with(".test.toml") {
                    found.push(entry.clone());
                } else if entry.is_dir() && is_tests_folder(&entry) {
                    found.extend(tomls_in(&entry)?);
                }
            }
        }
        if found.is_empty() {
            bail!(
                "no test files in {}: write NAME.test.toml beside NAME.wasm (see `wasmhooks test --help`)",
                path.display()
            );
        }
        files.extend(found);
    }
    Ok(files)
}

/// Whether `dir` is a `NAME.tests/` folder: each `.toml` in it is a test
/// file of `NAME.wasm`.
fn is_tests_folder(dir: &Path) -> bool {
    dir.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".tests"))
}

/// The `.toml` files of a `NAME.tests/` folder.
fn tomls_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let files = read_dir(dir)?.into_iter();
    Ok(files
        .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "toml"))
        .collect())
}

/// A folder's entries, sorted.
fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read {} (a test file or a folder of them)",
            dir.display()
        )
    })?;
    let mut paths = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

/// The hook a test file tests: its `hook`, else `NAME.wasm` beside
/// `NAME.test.toml`, or beside the `NAME.tests/` folder it is in.
fn hook_of(file: &Path, test: &TestFile) -> Result<PathBuf> {
    let dir = file.parent().unwrap_or(Path::new("."));
    if let Some(hook) = &test.hook {
        return Ok(dir.join(hook));
    }
    // A folder of tests first: `deny.tests/protected.test.toml` tests deny.
    let folder = dir.file_name().unwrap_or_default().to_string_lossy();
    if let Some(hook) = folder.strip_suffix(".tests") {
        let parent = dir.parent().unwrap_or(Path::new("."));
        return Ok(parent.join(format!("{hook}.wasm")));
    }
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    if let Some(hook) = name.strip_suffix(".test.toml") {
        return Ok(dir.join(format!("{hook}.wasm")));
    }
    bail!(
        "test file {}: which hook? name it NAME.test.toml beside NAME.wasm, put it in a \
         NAME.tests/ folder, or give `hook = \"NAME.wasm\"`",
        file.display()
    )
}

async fn run_file(config: &wasmhooks::config::Config, file: &Path) -> Result<FileResult> {
    let test = TestFile::read(file)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let hook = hook_of(file, &test)?;
    if !hook.is_file() {
        bail!(
            "test file {}: the hook {} is not there (build it first)",
            file.display(),
            hook.display()
        );
    }
    let settings_file = match &test.settings {
        Some(settings) => Some(dir.join(settings)),
        None => Some(hook.with_extension("toml")).filter(|f| f.is_file()),
    };
    let settings = match &settings_file {
        Some(path) => load_hook_settings(path)?,
        None => HookConfig::default(),
    };
    let mut cases = Vec::with_capacity(test.cases.len());
    for case in &test.cases {
        let event = case.event(dir)?;
        let event = Event::from_value(event).with_context(|| {
            format!(
                "test file {}, case {:?}: the event",
                file.display(),
                case.name
            )
        })?;
        let mut settings = settings.clone();
        if let Some(table) = &case.settings {
            settings.settings = table.clone();
        }
        let started = Instant::now();
        let ran = wasmhooks::dry_run(config, &hook, Some(settings), &event).await;
        cases.push(CaseResult {
            name: case.name.clone(),
            took: started.elapsed(),
            differences: expect::differences(&case.expect, &ran),
        });
    }
    Ok(FileResult {
        file: file.to_owned(),
        cases,
        error: None,
    })
}

fn print(result: &FileResult) {
    println!("{}", shown(&result.file).display());
    if let Some(error) = &result.error {
        println!("  ERROR {error}");
    }
    for case in &result.cases {
        let word = match case.differences.is_empty() {
            true => "ok  ",
            false => "FAIL",
        };
        println!("  {word}  {}  ({} ms)", case.name, case.took.as_millis());
        for difference in &case.differences {
            println!("          {difference}");
        }
    }
}
