//! `wasmhooks hooks push|engines`: a shared hooks bucket on NATS JetStream.

use crate::cli::{HooksCommand, load_config};
use anyhow::{Context, Result, bail};
use std::process::ExitCode;
use wasmhooks::bucket;

pub(crate) async fn hooks(command: HooksCommand) -> Result<ExitCode> {
    match command {
        HooksCommand::Push(args) => {
            let config = args.bucket.bucket()?;
            if !args.dir.is_dir() {
                bail!("{} is not a folder", args.dir.display());
            }
            if !args.no_check {
                // Every engine would refuse a set that does not load here.
                let settings = load_config(args.bucket.config.as_deref())?;
                let (_engine, failed) = crate::check::load(settings, args.dir.clone()).await?;
                if failed > 0 {
                    bail!(
                        "not pushed: {failed} hooks of {} do not load (the table says why); \
                         fix them, or push anyway with --no-check",
                        args.dir.display()
                    );
                }
            }
            let pushed = bucket::push(&config, &args.dir)
                .await
                .with_context(|| format!("cannot push {}", args.dir.display()))?;
            println!(
                "set {}: {} hooks from {} ({} new files, {} bytes uploaded); \
                 `wasmhooks hooks engines` shows which engines serve it",
                pushed.version,
                pushed.hooks,
                args.dir.display(),
                pushed.uploaded,
                pushed.uploaded_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        HooksCommand::Engines(args) => {
            let config = args.bucket()?;
            let current = bucket::current_version(&config)
                .await
                .context("cannot read the current set")?;
            let reports = bucket::engines(&config)
                .await
                .context("cannot read the engines' reports")?;
            println!("current set: {current}");
            println!("{:<32} {:>5} {:<7} REFUSED", "ENGINE", "SET", "STATE");
            let mut behind = 0;
            for r in &reports {
                let refused = r.set.refused.as_ref().map_or(String::new(), |f| {
                    format!("set {}: {}", f.version, f.reasons.join("; "))
                });
                // A stale report is an engine gone (or cut off): listed,
                // not counted.
                let state = if r.stale {
                    "stale"
                } else if r.set.version == current {
                    "ok"
                } else {
                    behind += 1;
                    "behind"
                };
                println!(
                    "{:<32} {:>5} {:<7} {refused}",
                    r.engine, r.set.version, state
                );
            }
            if behind > 0 {
                eprintln!("{behind} engines do not serve the current set {current}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
