//! `wasmhooks check`: load every hook of a folder, print a table.

use crate::cli::{CheckArgs, load_config};
use anyhow::{Result, bail};
use std::process::ExitCode;
use wasmhooks::{Engine, HookState};

pub(crate) async fn check(args: CheckArgs) -> Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let (_engine, failed) = load(config, args.dir).await?;
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads every hook of `dir` under `config`'s limits and trust, prints a
/// table, and says how many failed.
pub(crate) async fn load(
    mut config: wasmhooks::config::Config,
    dir: std::path::PathBuf,
) -> Result<(Engine, usize)> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    // Loads and sends nothing: no queue, source or archive of the engines
    // whose settings these are (their limits and `[trust]` do apply).
    config.hooks_dir = dir;
    config.hooks_bucket = None;
    config.watch = false;
    config.state_dir = None;
    config.queue = wasmhooks::config::QueueConfig::Memory;
    config.sources = Default::default();
    config.archive = None;
    let engine = Engine::new(config).await?;
    let hooks = engine.hooks();
    println!("{:<16} {:<7} {:<13} DETAIL", "HOOK", "STATE", "VERSION");
    for hook in &hooks {
        let version = hook.hash.as_deref().map(|h| &h[..12]).unwrap_or("-");
        let detail = match (&hook.last_error, &hook.subscription) {
            (Some(e), _) => format!("{} failed ({}): {}", e.stage, e.file.display(), e.reason),
            (None, Some(s)) => {
                let phases: Vec<String> = s.phases.iter().map(|p| p.to_string()).collect();
                let abi = match hook.abi {
                    Some(wasmhooks::Abi::Command) => " (WASI command)",
                    _ => "",
                };
                format!("{} [{}]{abi}", s.methods.join(", "), phases.join(", "))
            }
            (None, None) => String::new(),
        };
        let state = if hook.state == HookState::Live {
            "ok"
        } else {
            "FAILED"
        };
        println!("{:<16} {:<7} {:<13} {}", hook.name, state, version, detail);
    }
    let failed = hooks.iter().filter(|h| h.last_error.is_some()).count();
    if hooks.is_empty() {
        println!(
            "no hooks (*.wasm) in {}",
            engine.config().hooks_dir.display()
        );
    }
    if failed > 0 {
        eprintln!("{failed} of {} hooks failed to load", hooks.len());
    }
    Ok((engine, failed))
}
