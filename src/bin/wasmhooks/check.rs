//! `wasmhooks check`: load every hook of a folder, print a table.

use crate::cli::{CheckArgs, load_config};
use anyhow::{Result, bail};
use std::process::ExitCode;
use wasmhooks::{Engine, HookState};

pub(crate) async fn check(args: CheckArgs) -> Result<ExitCode> {
    let mut config = load_config(args.config.as_deref())?;
    if !args.dir.is_dir() {
        bail!("{} is not a folder", args.dir.display());
    }
    config.hooks_dir = args.dir;
    config.watch = false;
    config.state_dir = None; // sends nothing, and must not lock a running engine's state
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
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
